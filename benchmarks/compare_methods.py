"""Compare pruning and fine-tuning methods through DVC experiments; print a markdown table.

Runs `dvc exp run evaluate` once per prune.method x finetune.distill, then reads
`dvc exp show --json` and prints, per combination, exact match and F1 of the dense baseline, the
zero-shot pruned model and the sparse fine-tuned model. Run from the repository root:

    python benchmarks/compare_methods.py                        # the six experiments, then the table
    python benchmarks/compare_methods.py -S data.source=json    # -S goes to every run (and filters the table)
    python benchmarks/compare_methods.py --no-run               # the table from experiments already run

The table takes the newest matching experiment, and of the others only those whose params are the
same but for prune.method and finetune.distill, so every row was made under the same setting. Like any
`dvc exp run`, the runs happen in the workspace: it is left with the last combination's params and
results (`git checkout params.yaml && dvc checkout` goes back).
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys

import yaml

METHODS = ("magnitude", "wanda", "sparsegpt")
DISTILL = (False, True)
COMBINATION_KEYS = ("prune.method", "finetune.distill")
VARIANTS = (("dense", "dense"), ("pruned", "zero-shot pruned"), ("sparse", "sparse fine-tuned"))


def dvc(*args: str, capture: bool = False) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], check=True, text=True,
                            stdout=subprocess.PIPE if capture else None)
    return result.stdout


def set_flags(assignments: list[str]) -> list[str]:
    return [flag for assignment in assignments for flag in ("-S", assignment)]


def run_experiments(overrides: list[str]) -> None:
    for method, distill in itertools.product(METHODS, DISTILL):
        combination = [f"prune.method={method}", f"finetune.distill={str(distill).lower()}"]
        print(f"== dvc exp run: {' '.join(overrides + combination)}", file=sys.stderr, flush=True)
        dvc("exp", "run", *set_flags(overrides + combination), "evaluate")


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def experiments(shown: list[dict]) -> list[dict]:
    """Every finished experiment of `dvc exp show --json` that has scores: name, timestamp, flat
    params, scores. One still running has no timestamp yet, and the workspace's metrics: skipped."""
    found = []
    for commit in shown:
        for group in commit.get("experiments") or []:
            for exp in group["revs"]:
                data = exp.get("data") or {}
                scores = (data.get("metrics") or {}).get("metrics/evaluate.json", {}).get("data")
                if scores and data.get("timestamp"):
                    params = flatten(data["params"]["params.yaml"]["data"])
                    found.append({"name": exp.get("name") or exp["rev"][:7], "timestamp": data["timestamp"],
                                  "params": params, "scores": scores})
    return found


def same_setting(a: dict, b: dict) -> bool:
    """Equal params but for the compared keys."""
    return {k: v for k, v in a.items() if k not in COMBINATION_KEYS} == \
           {k: v for k, v in b.items() if k not in COMBINATION_KEYS}


def select(found: list[dict], overrides: list[str]) -> dict[tuple, dict]:
    """Per (method, distill), the newest experiment under the newest matching experiment's setting."""
    wanted = {key: yaml.safe_load(value) for key, value in (o.split("=", 1) for o in overrides)}
    matching = sorted((e for e in found if all(e["params"].get(k) == v for k, v in wanted.items())),
                      key=lambda e: e["timestamp"], reverse=True)
    if not matching:
        return {}
    setting = matching[0]["params"]
    chosen = {}
    for exp in matching:
        key = tuple(exp["params"][k] for k in COMBINATION_KEYS)
        if key not in chosen and same_setting(exp["params"], setting):
            chosen[key] = exp
    return chosen


def markdown_table(chosen: dict[tuple, dict]) -> str:
    header = ["prune.method", "finetune.distill"] + [f"{label} {m}" for _, label in VARIANTS for m in ("F1", "EM")]
    header += ["sparse - dense F1", "experiment"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, distill in itertools.product(METHODS, DISTILL):
        exp = chosen.get((method, distill))
        if exp is None:
            cells = ["not run"] * (len(header) - 2)
        else:
            scores = exp["scores"]
            cells = [f"{scores[v][m]:.2f}" for v, _ in VARIANTS for m in ("f1", "exact_match")]
            cells += [f"{scores['sparse']['f1'] - scores['dense']['f1']:+.2f}", exp["name"]]
        lines.append("| " + " | ".join([method, str(distill).lower()] + cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a params.yaml override for every run (and the table's filter)")
    parser.add_argument("--no-run", action="store_true", help="only read the experiments already run")
    args = parser.parse_args()
    if not args.no_run:
        run_experiments(args.overrides)
    chosen = select(experiments(json.loads(dvc("exp", "show", "--json", capture=True))), args.overrides)
    if not chosen:
        sys.exit("no DVC experiment with metrics/evaluate.json matches; run without --no-run first")
    print(markdown_table(chosen))
    run = next(iter(chosen.values()))["scores"].get("run", {})
    print(f"\nevaluated on {run.get('device')} ({run.get('gpu') or run.get('cpu')}), torch {run.get('torch')}, "
          f"transformers {run.get('transformers')}")


if __name__ == "__main__":
    main()
