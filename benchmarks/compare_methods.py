"""Compare pruning and fine-tuning methods through DVC experiments; print a markdown table.

Runs `dvc exp run evaluate` once per prune.method x finetune.distill, then reads
`dvc exp show --json` and prints, per combination, exact match and F1 of the dense baseline, the
zero-shot pruned model and the sparse fine-tuned model. Run from the repository root:

    python benchmarks/compare_methods.py                        # the six experiments, then the table
    python benchmarks/compare_methods.py -S data.source=json    # -S goes to every run (and filters the table)
    python benchmarks/compare_methods.py --no-run               # the table from experiments already run
    python benchmarks/compare_methods.py --seeds 1 2 3          # each combination per seed; means

The table takes the newest matching experiment, and of the others only those whose params are the
same but for prune.method and finetune.distill (and seed, with --seeds), so every row was made under
the same setting. With --seeds, each row is the mean over the seeds' experiments, and the gap to dense
comes with its standard error: on a small validation set one seed's gap moves by a few F1. Like any
`dvc exp run`, the runs happen in the workspace: it is left with the last combination's params and
results (`git checkout params.yaml && dvc checkout` goes back).
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
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


def run_experiments(overrides: list[str], seeds: list[int] | None) -> None:
    for seed, method, distill in itertools.product(seeds or [None], METHODS, DISTILL):
        combination = [f"prune.method={method}", f"finetune.distill={str(distill).lower()}"]
        combination += [f"seed={seed}"] if seed is not None else []
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


def same_setting(a: dict, b: dict, ignored: tuple[str, ...]) -> bool:
    """Equal params but for the ignored keys."""
    return {k: v for k, v in a.items() if k not in ignored} == {k: v for k, v in b.items() if k not in ignored}


def select(found: list[dict], overrides: list[str], seeds: list[int] | None = None) -> dict[tuple, list[dict]]:
    """Per (method, distill), the newest experiment of each seed (of `seeds`; without, the newest
    experiment) under the newest matching experiment's setting."""
    wanted = {key: yaml.safe_load(value) for key, value in (o.split("=", 1) for o in overrides)}
    matching = sorted((e for e in found if all(e["params"].get(k) == v for k, v in wanted.items())
                       and (not seeds or e["params"].get("seed") in seeds)),
                      key=lambda e: e["timestamp"], reverse=True)
    if not matching:
        return {}
    setting = matching[0]["params"]
    ignored = COMBINATION_KEYS + (("seed",) if seeds else ())
    chosen: dict[tuple, dict] = {}
    for exp in (e for e in matching if same_setting(e["params"], setting, ignored)):
        by_seed = chosen.setdefault(tuple(exp["params"][k] for k in COMBINATION_KEYS), {})
        by_seed.setdefault(exp["params"].get("seed"), exp)  # newest first: the first one stays
    return {key: list(by_seed.values()) for key, by_seed in chosen.items()}


def mean_and_error(values: list[float]) -> str:
    """'+1.23' for one value; '+1.23 (se 0.45)' for several."""
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:+.2f}"
    return f"{mean:+.2f} (se {statistics.stdev(values) / len(values) ** 0.5:.2f})"


def markdown_table(chosen: dict[tuple, list[dict]]) -> str:
    """One row per combination; with several seeds' experiments, each score is their mean."""
    header = ["prune.method", "finetune.distill"] + [f"{label} {m}" for _, label in VARIANTS for m in ("F1", "EM")]
    header += ["sparse - dense F1", "experiment"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, distill in itertools.product(METHODS, DISTILL):
        runs = chosen.get((method, distill))
        if not runs:
            cells = ["not run"] * (len(header) - 2)
        else:
            scores = [exp["scores"] for exp in runs]
            cells = [f"{statistics.mean(s[v][m] for s in scores):.2f}" for v, _ in VARIANTS for m in ("f1", "exact_match")]
            cells += [mean_and_error([s["sparse"]["f1"] - s["dense"]["f1"] for s in scores]),
                      ", ".join(exp["name"] for exp in runs)]
        lines.append("| " + " | ".join([method, str(distill).lower()] + cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a params.yaml override for every run (and the table's filter)")
    parser.add_argument("--no-run", action="store_true", help="only read the experiments already run")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                        help="run (and average) each combination once per seed")
    args = parser.parse_args()
    if not args.no_run:
        run_experiments(args.overrides, args.seeds)
    chosen = select(experiments(json.loads(dvc("exp", "show", "--json", capture=True))), args.overrides, args.seeds)
    if not chosen:
        sys.exit("no DVC experiment with metrics/evaluate.json matches; run without --no-run first")
    print(markdown_table(chosen))
    run = next(iter(chosen.values()))[0]["scores"].get("run", {})
    print(f"\nevaluated on {run.get('device')} ({run.get('gpu') or run.get('cpu')}), torch {run.get('torch')}, "
          f"transformers {run.get('transformers')}")


if __name__ == "__main__":
    main()
