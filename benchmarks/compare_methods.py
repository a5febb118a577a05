"""Compare pruning and fine-tuning methods through DVC experiments; print a markdown table.

Runs `dvc exp run evaluate` once per prune.method x finetune.distill, then finds the experiments
in `dvc exp show --json`, reads each one's reports/evaluate.json (through DVC's cache) and prints,
per combination, exact match and F1 of the dense baseline, the zero-shot pruned model and the
sparse fine-tuned model. Run from the repository root:

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
import subprocess
import sys

import pandas as pd
import yaml

METHODS = ("magnitude", "wanda", "sparsegpt")
DISTILL = (False, True)
COMBINATION_KEYS = ("prune.method", "finetune.distill")
VARIANTS = (("dense", "dense"), ("pruned", "zero-shot pruned"), ("sparse", "sparse fine-tuned"))
REPORT = "reports/evaluate.json"  # EM and F1 per variant, with the run facts: a cached out, not a metric


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


def experiments(shown: list[dict]) -> list[dict]:
    """Every finished experiment of `dvc exp show --json` with an evaluate report: name, commit,
    timestamp, flat params. One still running has no timestamp yet: skipped."""
    found = []
    for commit in shown:
        for group in commit.get("experiments") or []:
            for exp in group["revs"]:
                data = exp.get("data") or {}
                if REPORT in (data.get("outs") or {}) and data.get("timestamp"):
                    params = pd.json_normalize(data["params"]["params.yaml"]["data"]).to_dict("records")[0]
                    found.append({"name": exp.get("name") or exp["rev"][:7], "rev": exp["rev"],
                                  "timestamp": data["timestamp"], "params": params})
    return found


def evaluation(rev: str) -> dict:
    """The evaluate report as the experiment (commit) `rev` left it."""
    import dvc.api  # here: only main needs it

    return json.loads(dvc.api.read(REPORT, rev=rev))


def with_scores(chosen: dict[tuple, list[dict]], read=evaluation) -> dict[tuple, list[dict]]:
    """The chosen experiments, each with its evaluate report as "scores"."""
    return {key: [{**exp, "scores": read(exp["rev"])} for exp in runs] for key, runs in chosen.items()}


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


def mean_and_error(values: pd.Series) -> str:
    """'+1.23' for one value; '+1.23 (se 0.45)' for several."""
    if len(values) == 1:
        return f"{values.mean():+.2f}"
    return f"{values.mean():+.2f} (se {values.sem():.2f})"


def scores_frame(chosen: dict[tuple, list[dict]]) -> pd.DataFrame:
    """One row per experiment: its combination, name and flattened scores ("dense.f1", ...)."""
    rows = [{"prune.method": method, "finetune.distill": distill, "experiment": exp["name"],
             **pd.json_normalize(exp["scores"]).to_dict("records")[0]}
            for (method, distill), runs in chosen.items() for exp in runs]
    return pd.DataFrame(rows)


def markdown_table(chosen: dict[tuple, list[dict]]) -> str:
    """One row per combination; with several seeds' experiments, each score is their mean."""
    frame = scores_frame(chosen)
    frame["gap"] = frame["sparse.f1"] - frame["dense.f1"]
    score_columns = {f"{v}.{m}": f"{label} {name}" for v, label in VARIANTS
                     for m, name in (("f1", "F1"), ("exact_match", "EM"))}
    table = frame.groupby(list(COMBINATION_KEYS)).agg(
        **{label: (column, lambda s: f"{s.mean():.2f}") for column, label in score_columns.items()},
        **{"sparse - dense F1": ("gap", mean_and_error), "experiment": ("experiment", ", ".join)})
    every = pd.MultiIndex.from_tuples(list(itertools.product(METHODS, DISTILL)), names=COMBINATION_KEYS)
    table = table.reindex(every).fillna("not run").reset_index()
    table["finetune.distill"] = table["finetune.distill"].map({True: "true", False: "false"})
    return table.to_markdown(index=False, disable_numparse=True)  # the cells are formatted already


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
        sys.exit(f"no DVC experiment with {REPORT} matches; run without --no-run first")
    chosen = with_scores(chosen)
    print(markdown_table(chosen))
    run = next(iter(chosen.values()))[0]["scores"].get("run", {})
    print(f"\nevaluated on {run.get('device')} ({run.get('gpu') or run.get('cpu')}), torch {run.get('torch')}, "
          f"transformers {run.get('transformers')}")


if __name__ == "__main__":
    main()
