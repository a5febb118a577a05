"""DDP scaling of train_baseline on SQuAD train: samples/s and dev F1 at 1, 2, 4, 8 GPUs.

Each GPU count trains the dense baseline with train.num_processes set to it (torchrun, one process
per GPU, the same effective batch and schedule), from each seed, and scores it on the validation
file. results.jsonl gets a line per run; the summary gives samples/s, the speed-up over the first
count and F1 (mean and standard error over the seeds) per count. Like squad_seeds.py it needs only
torch, transformers and datasets.

    python benchmarks/ddp_scaling.py --data-dir DIR --train train-v1.1.json.gz \
        --validation dev-v1.1.json.gz --gpus 1 2 4 8 --seeds 1 2 --out runs/ddp-scaling [-S ...]

train.batch_size is the effective batch, so it is split over the GPUs (a multiple of each count).
"""
from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

from squad_seeds import (add_run_arguments, files_config, full_data_params, log, parse_overrides, tokenize_sets,
                         with_overrides)


def train_and_score(raw: dict, gpus: int, seed: int, features: Path, work: Path, results: Path) -> None:
    """One dense baseline on `gpus` processes from `seed`: its throughput and dev scores logged."""
    from stages.evaluate import evaluate
    from stages.params import validate
    from stages.train_baseline import train_baseline

    cfg = copy.deepcopy(raw)
    cfg["seed"] = seed
    cfg["train"]["num_processes"] = gpus
    params = validate(cfg)
    model_dir = work / f"dense-{gpus}gpu-{seed}"
    start = time.perf_counter()
    stats = train_baseline(params, features, model_dir)
    train_s = round(time.perf_counter() - start, 1)  # torchrun's start and the ranks' imports included
    score = evaluate(params, features, {"dense": model_dir})["dense"]
    log(results, {"gpus": gpus, "seed": seed, **score, "samples_per_second": stats["samples_per_second"],
                  "train_s": train_s, "steps": stats["steps"], "processes": stats["processes"],
                  "batch_size": params["train.batch_size"], "precision": stats["precision"]})


def summary(results: Path) -> str:
    """Per GPU count: mean samples/s, its speed-up over the smallest count, and F1 (mean, se)."""
    import pandas as pd

    rows = pd.read_json(results, lines=True)
    runs = rows[rows["gpus"].notna()].astype({"gpus": int})  # the tokenize line has no GPU count
    table = runs.groupby("gpus").agg(seeds=("f1", "size"), samples_per_second=("samples_per_second", "mean"),
                                     f1=("f1", "mean"), f1_se=("f1", "sem"), train_s=("train_s", "mean"))
    table.insert(2, "speedup", table["samples_per_second"] / table["samples_per_second"].iloc[0])
    return table.round(3).to_string()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--validation", required=True, help="validation file name in --data-dir")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8], help="GPU counts, in order")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    args = parser.parse_args()
    import torch

    visible = torch.cuda.device_count()
    if visible and max(args.gpus) > visible:  # without a GPU the counts are gloo processes: a smoke test
        raise SystemExit(f"--gpus {max(args.gpus)}: only {visible} GPU(s) visible")
    args.data_dir, args.out = args.data_dir.resolve(), args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    work = (args.work or args.out / "work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # the stage's .checkpoints/ go here, not into a checkout's
    raw = with_overrides(full_data_params(), parse_overrides(args.overrides))
    sets = {"dev": files_config(raw, args.data_dir, args.train, args.validation)}
    features = tokenize_sets(sets, work, args.out / "results.jsonl")["dev"]
    for gpus in args.gpus:
        for seed in args.seeds:
            train_and_score(raw, gpus, seed, features, work, args.out / "results.jsonl")
    print(summary(args.out / "results.jsonl"))


if __name__ == "__main__":
    main()
