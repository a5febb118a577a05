"""prune: 2:4 masks on the encoder's Linears with torch.ao.pruning (magnitude, per block of 4).

The filter is "every nn.Linear inside the model's transformer body, minus prune.exclude", so it
works for BERT-family models without a layer name wired in; the QA head is never pruned.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch.ao.pruning import WeightNormSparsifier

from .common import StageError
from .modeling import encoder_linears, load_qa_model, load_tokenizer, save_model

GROUP = 4  # 2:4 = at least 2 zeros in every 4 consecutive weights along the input dimension
MASKS_FILE = "masks.pt"


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


def attach_sparsifier(model: torch.nn.Module, layer_names: list[str], params) -> WeightNormSparsifier:
    """Parametrize the layers' weights with 2:4 masks (all ones until step() or a load)."""
    sparsifier = WeightNormSparsifier(
        sparsity_level=1.0,  # every block gets its zeros_per_block zeros
        sparse_block_shape=tuple(params["prune.sparse_block_shape"]),
        zeros_per_block=params["prune.zeros_per_block"],
    )
    sparsifier.prepare(model, [{"tensor_fqn": f"{name}.weight"} for name in layer_names])
    return sparsifier


def current_masks(sparsifier: WeightNormSparsifier) -> dict[str, torch.Tensor]:
    return {
        group["module_fqn"]: group["module"].parametrizations.weight[0].mask.detach().bool().clone()
        for group in sparsifier.groups
    }


def load_masks(sparsifier: WeightNormSparsifier, masks: dict[str, torch.Tensor]) -> None:
    """Hold saved masks during training: the parametrization multiplies them in on every forward."""
    for group in sparsifier.groups:
        name = group["module_fqn"]
        if name not in masks:
            raise StageError(f"{MASKS_FILE}: no mask for layer {name}")
        group["module"].parametrizations.weight[0].mask.copy_(masks[name])


def two_four_violations(weight: torch.Tensor) -> int:
    """Groups of 4 consecutive weights along the input dimension with fewer than 2 zeros."""
    groups = weight.detach().reshape(weight.shape[0], -1, GROUP)
    return int(((groups == 0).sum(dim=-1) < 2).sum())


def sparsity_report(model: torch.nn.Module, layer_names: list[str]) -> dict[str, dict]:
    modules = dict(model.named_modules())
    report = {}
    for name in layer_names:
        weight = modules[name].weight
        report[name] = {
            "shape": list(weight.shape),
            "sparsity": round(float((weight == 0).float().mean()), 4),
            "violations_2of4": two_four_violations(weight),
        }
    return report


def summarize(report: dict[str, dict]) -> dict:
    total = sum(r["shape"][0] * r["shape"][1] for r in report.values())
    zeros = sum(r["sparsity"] * r["shape"][0] * r["shape"][1] for r in report.values())
    return {
        "layers_pruned": len(report),
        "sparsity_of_pruned_layers": round(zeros / total, 4),
        "pattern_2of4_holds": all(r["violations_2of4"] == 0 for r in report.values()),
        "layers": report,
    }


def prune(params, baseline_dir: Path, out_dir: Path) -> dict:
    if params["prune.method"] != "magnitude":
        raise StageError(f"params.yaml: prune.method={params['prune.method']!r} is not implemented")
    model = load_qa_model(str(baseline_dir))
    tokenizer = load_tokenizer(str(baseline_dir))
    names = list(prunable_linears(model, params["prune.exclude"]))
    sparsifier = attach_sparsifier(model, names, params)
    sparsifier.step()  # magnitude: keep the 2 largest |w| of every 4
    masks = current_masks(sparsifier)
    sparsifier.squash_mask()
    summary = summarize(sparsity_report(model, names))
    if not summary["pattern_2of4_holds"]:
        raise StageError("pruning left groups of 4 with fewer than 2 zeros; see the per-layer report")
    save_model(model, tokenizer, out_dir)
    torch.save(masks, out_dir / MASKS_FILE)
    return {"method": params["prune.method"], **summary}
