"""accelerate: turn the sparse model into an inference model with a measured per-layer kernel plan.

The work is the engine's one call, engine.accelerate.accelerate (what it plans, and where it falls back
to dense, is said there); this stage gives it params.yaml's settings and, for the int8 check, one seeded
batch of the train features.
"""
from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig

from engine.accelerate import AccelerateOptions, Calibration, accelerate
from engine.common import best_device
from engine.config import EngineConfig
from engine.models import check_sequence_length, load_tokenizer
from engine.planner import TUNING_BUDGET_S
from pruning.masks import calibration_batches

from .common import device_facts


def options_from(params, tuning_budget_s: float) -> AccelerateOptions:
    return AccelerateOptions(
        mode=params["accelerate.mode"], precision=params["accelerate.precision"], dtype=params["accelerate.dtype"],
        batch_sizes=tuple(params["benchmark.batch_sizes"]), seq_length=params["benchmark.seq_length"],
        compile=params["accelerate.compile"], max_alg_id=params["accelerate.max_alg_id"],
        int8_smoothing=params["accelerate.int8_smoothing"], tuning_budget_s=tuning_budget_s,
        calibration_size=params["prune.calibration_batch_size"], seed=params["seed"])


def train_calibration(params, sparse_dir: Path, features_dir: Path | None) -> Calibration | None:
    """One seeded batch of train features where they exist (the pipeline); None where they do not (a bare
    GPU box, benchmarks/gpu_engine.py): the engine then calibrates on random tokens."""
    if features_dir is None or not (features_dir / "train").exists():
        return None
    import datasets  # here, not at the top: the GPU box has no datasets

    size = params["prune.calibration_batch_size"]
    batch = calibration_batches(datasets.load_from_disk(str(features_dir / "train")),
                                load_tokenizer(str(sparse_dir)), 1, size, params["seed"])[0]
    return Calibration(batch, f"{size} train features")


def run(params, sparse_dir: Path, out_dir: Path, features_dir: Path | None = None,
        tuning_budget_s: float = TUNING_BUDGET_S) -> dict:
    device = best_device()
    check_sequence_length(AutoConfig.from_pretrained(sparse_dir), params["benchmark.seq_length"],
                          "params.yaml: benchmark.seq_length")
    options = options_from(params, tuning_budget_s)
    report = accelerate(sparse_dir, out_dir, options, train_calibration(params, Path(sparse_dir), features_dir),
                        EngineConfig.from_env(),  # the cuSPARSELt library and plan cache the flow started with
                        device)
    report["device"] = device_facts(device)
    return report
