"""The SQuAD accuracy benchmark: the pipeline's own stage functions, once per seed, paired.

Each seed trains its own dense baseline, prunes it with every method (zero-shot scores), fine-tunes
the params' recipe from the params' prune.method, and scores dense, zero-shot and sparse on the
validation files (and on --extra-validation, e.g. XQuAD-en); with --int8, the accelerate stage's
int8 2:4 plan of the fine-tuned model too. Seeds run as processes side by side on one GPU (or one
after another with --parallel 1). It needs only torch, transformers and datasets: no DVC or
Prefect, so it runs on a bare GPU machine.

A run stopped part-way (a time limit) resumes when started again with the same arguments: every
model is written whole or not at all, steps whose scores are in OUT/results.jsonl are skipped,
and fine-tuning resumes from its last checkpoint.

    python benchmarks/squad_seeds.py --data-dir DIR --train train-v1.1.json.gz \
        --validation dev-v1.1.json.gz --seeds 1 2 3 --out runs/squad [-S train.epochs=2 ...]

The official files: https://rajpurkar.github.io/SQuAD-explorer/ (or the hub's rajpurkar/squad).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

METHODS = ("magnitude", "wanda", "sparsegpt")
# (variant, what it is compared with), seed by seed: what 2:4 costs, then what int8 adds to it.
PAIRED = (("sparse", "dense"), ("int8", "sparse"))


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """`-S key=value` pairs, values read as YAML (as `dvc exp run -S` does)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"-S {pair!r}: expected key=value")
        overrides[key] = yaml.safe_load(value)
    return overrides


def with_overrides(raw: dict, overrides: dict[str, object]) -> dict:
    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = value
    return raw


def log(path: Path, record: dict) -> None:
    print(json.dumps(record), flush=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The data files, where results and work go, and -S overrides: what every SQuAD driver takes."""
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding the SQuAD files")
    parser.add_argument("--train", required=True, help="train file name in --data-dir (.json or .json.gz)")
    parser.add_argument("--validation", required=True, help="validation file name in --data-dir")
    parser.add_argument("--out", type=Path, required=True, help="results.jsonl and logs go here")
    parser.add_argument("--work", type=Path, default=None, help="features, models, checkpoints (default: OUT/work)")
    parser.add_argument("-S", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params.yaml value, as dvc exp run -S does")


def full_data_params() -> dict:
    """params.yaml with no cap on the questions used: all of the files, unless -S says otherwise."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(max_train_examples=0, max_validation_examples=0)
    return raw


def logged(path: Path) -> set[tuple]:
    """(seed, variant, on) of every score already in results.jsonl."""
    if not path.exists():
        return set()
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["seed"], r["variant"], r["on"]) for r in records if "seed" in r}


def built(directory: Path, build) -> Path:
    """`build(tmp)` into a temporary sibling renamed to `directory` once whole; skipped if it exists."""
    from stages.common import atomic_dir

    if not directory.exists():
        with atomic_dir(directory) as tmp:
            build(tmp)
    return directory


def tokenize_once(raw: dict, args, work: Path) -> dict[str, Path]:
    """Features for the validation files and, if given, the extra validation file."""
    from engine.models import load_tokenizer
    from stages.modeling import resolve_model_source
    from stages.params import validate
    from stages.tokenize import tokenize

    tokenizer = load_tokenizer(resolve_model_source(raw["model"]["name"]))
    sets = {"dev": [args.validation]}
    if args.extra_validation:
        sets["extra"] = [args.extra_validation]
    features = {}
    for name, validation in sets.items():
        cfg = copy.deepcopy(raw)
        cfg["data"].update(source="files", dir=str(args.data_dir), train_files=[args.train],
                           validation_files=validation)
        if name != "dev":
            cfg["data"]["max_train_examples"] = 1  # the train features come from "dev"'s run
        features[name] = work / f"features-{name}"
        if features[name].exists():
            continue
        start = time.perf_counter()
        stats = {}
        built(features[name], lambda tmp: stats.update(tokenize(validate(cfg), tokenizer, tmp)))
        log(args.out / "results.jsonl", {"tokenize": name, **stats, "s": round(time.perf_counter() - start, 1)})
    return features


def run_seed(raw: dict, seed: int, args, features: dict[str, Path], work: Path) -> None:
    """One seed: dense baseline, zero-shot 2:4 per method, the recipe's fine-tune (and its int8 plan);
    every score logged, every step already done skipped."""
    from stages import training
    from stages.evaluate import evaluate
    from stages.finetune_sparse import finetune_sparse
    from stages.params import validate
    from stages.prune import prune
    from stages.train_baseline import train_baseline

    # Seeds side by side must not share (and so clear) one checkpoint folder.
    training.CHECKPOINTS = work / f"checkpoints-{seed}"
    results = args.out / "results.jsonl"
    done = logged(results)
    cfg = copy.deepcopy(raw)
    cfg["seed"] = seed
    params = validate(cfg)
    dev = features["dev"]

    def scores(variant: str, model_dir: Path, on=tuple(features), loaded_as: str = "dense", **extra) -> None:
        """`loaded_as` "accelerated" loads the model with its plan (evaluate's variant names)."""
        for name in on:
            if (seed, variant, name) not in done:
                score = evaluate(params, features[name], {loaded_as: model_dir})[loaded_as]
                log(results, {"seed": seed, "variant": variant, "on": name, **score, **extra})

    def trained(variant: str, model_dir: Path, train) -> None:
        """Train into model_dir unless it exists, then score it with the training figures."""
        stats, start = {}, time.perf_counter()
        built(model_dir, lambda tmp: stats.update(train(tmp)))
        figures = {key: stats[key] for key in ("samples_per_second", "steps", "precision", "resumed_from_step")
                   if key in stats}
        scores(variant, model_dir, **figures, **({"train_s": round(time.perf_counter() - start, 1)} if stats else {}))

    dense = work / f"dense-{seed}"
    trained("dense", dense, lambda tmp: train_baseline(params, dev, tmp))
    recipe_method = params["prune.method"]
    for method in sorted(METHODS, key=lambda m: m != recipe_method):  # the recipe's method first
        pruned = work / f"pruned-{method}-{seed}"
        method_cfg = copy.deepcopy(cfg)
        method_cfg["prune"]["method"] = method
        start = time.perf_counter()
        built(pruned, lambda tmp: prune(validate(method_cfg), dense, tmp, dev))
        scores(f"zero-shot-{method}", pruned, on=["dev"], prune_s=round(time.perf_counter() - start, 1))
        if method == recipe_method and not args.zero_shot_only:
            sparse = work / f"sparse-{seed}"
            trained("sparse", sparse, lambda tmp: finetune_sparse(params, dev, pruned, tmp, dense))
            if args.int8:
                int8_plan(params, cfg, sparse, work / f"int8-{seed}", dev, scores)


def int8_plan(params, cfg: dict, sparse: Path, out_dir: Path, features_dir: Path, scores) -> None:
    """The accelerate stage's int8 plan of the fine-tuned model on every layer that passes its
    accuracy check (mode all, not compiled: accuracy, not speed, is measured here), scored on dev."""
    from stages.accelerate import run as accelerate
    from stages.params import validate

    int8_cfg = copy.deepcopy(cfg)
    int8_cfg["accelerate"].update(mode="all", precision="int8", compile=False, max_alg_id=3)
    int8_cfg["benchmark"]["batch_sizes"] = [params["evaluate.batch_size"]]
    facts = {}
    built(out_dir, lambda tmp: facts.update(accelerate(validate(int8_cfg), sparse, tmp, features_dir)))
    int8 = facts.get("int8", {})
    scores("int8", out_dir, on=["dev"], loaded_as="accelerated", layers_int8=int8.get("layers_int8_ok"),
           layers_checked=int8.get("layers_checked"))


def summary(results: Path) -> str:
    """Mean F1/EM per variant, and the sparse-minus-dense F1 gap per seed (paired), with standard errors."""
    import pandas as pd

    rows = pd.read_json(results, lines=True)
    scored = rows[rows["seed"].notna()] if "seed" in rows else rows.iloc[:0]
    table = scored.groupby(["variant", "on"]).agg(seeds=("f1", "size"), f1=("f1", "mean"), f1_se=("f1", "sem"),
                                                  exact_match=("exact_match", "mean"))
    lines = [table.round(2).to_string()]
    f1 = scored.pivot_table(index=["on", "seed"], columns="variant", values="f1")
    for variant, reference in PAIRED:
        if {variant, reference} <= set(f1.columns):
            for on, gaps in (f1[variant] - f1[reference]).dropna().groupby(level="on"):
                lines.append(f"{variant} - {reference} on {on}: {gaps.mean():+.2f} F1 "
                             f"(se {gaps.sem():.2f}, {len(gaps)} paired seeds)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--extra-validation", help="a second validation file in --data-dir (e.g. XQuAD-en)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--parallel", type=int, default=0, help="seeds at a time (0: all)")
    parser.add_argument("--zero-shot-only", action="store_true", help="dense and zero-shot 2:4 only, no fine-tuning")
    parser.add_argument("--int8", action="store_true",
                        help="also score the accelerate stage's int8 2:4 plan of the fine-tuned model (needs a GPU)")
    parser.add_argument("--one-seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    raw = full_data_params()
    # Seeds run side by side, one process each: not each one torchrun over every GPU (unless -S says so).
    raw["train"]["num_processes"] = raw["finetune"]["num_processes"] = 1
    raw = with_overrides(raw, parse_overrides(args.overrides))
    features = {"dev": work / "features-dev"}
    if args.extra_validation:
        features["extra"] = work / "features-extra"
    if args.one_seed is not None:
        run_seed(raw, args.one_seed, args, features, work)
        return
    tokenize_once(raw, args, work)
    pending = list(args.seeds)
    running: list[tuple[int, subprocess.Popen]] = []
    failed = []
    while pending or running:
        while pending and len(running) < (args.parallel or len(args.seeds)):
            seed = pending.pop(0)
            log_file = open(args.out / f"seed-{seed}.log", "w")
            command = [sys.executable, __file__, *sys.argv[1:], "--one-seed", str(seed)]
            # Seeds side by side share the CPU cores instead of each taking all of them.
            threads = str(max(1, (os.cpu_count() or 1) // min(len(args.seeds), args.parallel or len(args.seeds))))
            running.append((seed, subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                                   env={**os.environ, "OMP_NUM_THREADS": threads})))
        time.sleep(5)
        for seed, process in list(running):
            if process.poll() is not None:
                running.remove((seed, process))
                if process.returncode:
                    failed.append(seed)
    print(summary(args.out / "results.jsonl"))
    if failed:
        raise SystemExit(f"seeds {failed} failed: see {args.out}/seed-<seed>.log")


if __name__ == "__main__":
    main()
