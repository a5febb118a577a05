"""finetune_sparse: recover accuracy with the 2:4 masks held, then bake them in and check the pattern.

With finetune.distill, the dense baseline is the teacher: the sparse model learns its start/end
distributions as well as the labels. With finetune.mask_ramp (gradual 2:4), training starts from the
dense baseline's weights instead of the pruned ones, and the weights the pruned model's masks remove
fade out over that fraction of the steps (training.MaskRamp); the masks themselves are the same.

finetune_dense gives the dense baseline the same fine-tuning (the same schedule and objective, the
baseline its own teacher): the compute-matched control a 2:4 model's accuracy is also held to, so
that extra training alone is not credited to the masks.
"""
from __future__ import annotations

from pathlib import Path

import datasets

from engine.adapters import encoder_linears
from engine.models import load_qa_model, load_tokenizer
from pruning.masks import fade_masks, masks_held, masks_in_weights, sparsity_report, sparsity_summary

from .common import StageError, seed_everything
from .distributed import is_first_process, processes_to_launch, run_in_processes
from .modeling import save_model
from .training import MaskRamp, checkpoint_dir, train_qa


def finetune_sparse(params, features_dir: Path, pruned_dir: Path, out_dir: Path,
                    baseline_dir: Path = Path("models/baseline")) -> dict:
    if (processes := processes_to_launch(params, "finetune")) > 1:
        return run_in_processes(finetune_sparse, processes, params, features_dir, pruned_dir, out_dir, baseline_dir)
    seed_everything(params["seed"])
    model = load_qa_model(str(pruned_dir))
    tokenizer = load_tokenizer(str(pruned_dir))
    masks = masks_in_weights(encoder_linears(model), params["prune.zeros_per_block"])
    if not masks:
        raise StageError(f"{pruned_dir}: no layer of its encoder is 2:4 sparse (not the prune stage's output?)")
    ramp = params["finetune.mask_ramp"]
    if ramp:
        model = load_qa_model(str(baseline_dir))  # the masks stay the pruned model's; the weights start dense
    with masks_held(model, masks, tuple(params["prune.sparse_block_shape"]), params["prune.zeros_per_block"]) as held:
        callbacks = [MaskRamp(lambda keep_removed: fade_masks(held, masks, keep_removed), ramp)] if ramp else []
        stats = finetune(params, model, tokenizer, features_dir, baseline_dir, "finetune_sparse", callbacks)
    summary = sparsity_summary(sparsity_report(model, list(masks)))
    if not summary["pattern_2of4_holds"]:
        bad = [n for n, r in summary["layers"].items() if r["violations_2of4"]]
        raise StageError(f"2:4 pattern broken after fine-tuning in {len(bad)} layers, first: {bad[0]}")
    if is_first_process():
        save_model(model, tokenizer, out_dir)
    return {**stats, **summary}


def finetune_dense(params, features_dir: Path, baseline_dir: Path, out_dir: Path) -> dict:
    """The dense baseline fine-tuned as finetune_sparse fine-tunes its pruned copy, with no masks."""
    if (processes := processes_to_launch(params, "finetune")) > 1:
        return run_in_processes(finetune_dense, processes, params, features_dir, baseline_dir, out_dir)
    seed_everything(params["seed"])
    model = load_qa_model(str(baseline_dir))
    tokenizer = load_tokenizer(str(baseline_dir))
    stats = finetune(params, model, tokenizer, features_dir, baseline_dir, "finetune_dense", [])
    if is_first_process():
        save_model(model, tokenizer, out_dir)
    return stats


def finetune(params, model, tokenizer, features_dir: Path, baseline_dir: Path, stage: str,
             callbacks: list) -> dict:
    """Train `model` in place on the train features with the finetune section's schedule and, with
    finetune.distill, the dense baseline as teacher; `stage` names its checkpoints."""
    train_features = datasets.load_from_disk(str(features_dir / "train"))
    teacher = load_qa_model(str(baseline_dir)) if params["finetune.distill"] else None
    return train_qa(model, tokenizer, train_features, params["finetune"], params["seed"], teacher,
                    checkpoints=checkpoint_dir(stage, params, train_features), callbacks=callbacks)
