"""prune: 2:4 masks on the encoder's Linears with torch.ao.pruning, per block of 4 inputs, by
prune.method: magnitude, wanda or sparsegpt (pruning.masks.prune_2of4: the scores and masks).

The filter is "every nn.Linear inside the model's transformer body, minus prune.exclude", so it
works for BERT-family models without a layer name wired in; the QA head is never pruned.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from engine.common import best_device
from engine.adapters import encoder_linears
from engine.models import load_qa_model, load_tokenizer
from engine.sparsity import GROUP
from pruning.masks import calibration_batches, prune_2of4

from .common import StageError
from .modeling import save_model


def prunable_linears(model: torch.nn.Module, exclude: str) -> dict[str, torch.nn.Linear]:
    """The Linears to prune; fails loudly if one cannot take a 2:4 pattern."""
    layers = {name: m for name, m in encoder_linears(model).items() if not (exclude and re.search(exclude, name))}
    if not layers:
        raise StageError(f"no nn.Linear left to prune inside the model's encoder (prune.exclude={exclude!r})")
    for name, linear in layers.items():
        if linear.in_features % GROUP:
            raise StageError(
                f"layer {name}: weight shape {tuple(linear.weight.shape)} cannot take 2:4 "
                f"(in_features {linear.in_features} is not a multiple of {GROUP}); add it to prune.exclude"
            )
    return layers


def prune(params, baseline_dir: Path, out_dir: Path, features_dir: Path = Path("features")) -> dict:
    """2:4-prune the baseline by params' prune.method; wanda and sparsegpt calibrate on features_dir/train."""
    device = best_device()  # calibration and SparseGPT's column loop are many small ops: far faster on a GPU
    model = load_qa_model(str(baseline_dir)).to(device)
    tokenizer = load_tokenizer(str(baseline_dir))
    layers = prunable_linears(model, params["prune.exclude"])
    method = params["prune.method"]
    calibration, batches = {}, None
    if method in ("wanda", "sparsegpt"):
        import datasets  # here, not at the top: the GPU box that runs accelerate has no datasets

        train_features = datasets.load_from_disk(str(features_dir / "train"))
        batches = [{k: v.to(device) for k, v in batch.items()}
                   for batch in calibration_batches(train_features, tokenizer, params["prune.calibration_batches"],
                                                    params["prune.calibration_batch_size"], params["seed"])]
        calibration = {"calibration_sequences": sum(len(b["input_ids"]) for b in batches),
                       "calibration_tokens": sum(int(b["attention_mask"].sum()) for b in batches)}
    summary = prune_2of4(model, layers, method, batches, params["prune.sequential"],
                         tuple(params["prune.sparse_block_shape"]), params["prune.zeros_per_block"])
    save_model(model, tokenizer, out_dir)  # the masks are its zeros: pruning.masks.masks_in_weights
    return {"method": method, **calibration, **summary}
