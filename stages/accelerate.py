"""accelerate: turn the sparse model into an inference model with a per-layer kernel plan.

On a CUDA GPU with 2:4 tensor cores (compute capability >= 8.0) the pruned Linears are
converted for semi-structured sparse kernels, backend chosen by the device (CUTLASS's forced
path fails on 9.x); everywhere else every layer is planned "dense" with the reason, and the
stage still succeeds. The plan is saved beside the model and applied again when it is loaded.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .common import StageError, best_device, device_facts, read_json, write_json
from .modeling import load_qa_model
from .prune import MASKS_FILE, two_four_violations

PLAN_FILE = "plan.json"
MAX_RELATIVE_ERROR = 2e-3


def sparse_backend(device: torch.device) -> tuple[str | None, str]:
    """(backend, why): the 2:4 kernel library this device can use, or None with the reason."""
    if device.type != "cuda":
        return None, "dense: no CUDA device"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return None, f"dense: compute capability {major}.{minor} < 8.0 has no 2:4 sparse tensor cores"
    if major == 8:
        return "cutlass", f"compute capability {major}.{minor}: CUTLASS 2:4 kernels"
    if getattr(torch.backends, "cusparselt", None) is None or not torch.backends.cusparselt.is_available():
        return None, f"dense: compute capability {major}.{minor} needs cuSPARSELt, which this torch lacks"
    return "cusparselt", f"compute capability {major}.{minor}: cuSPARSELt 2:4 kernels"


def build_plan(layers: dict[str, torch.nn.Linear], mode: str, device: torch.device) -> dict:
    """Which layers get 2:4 kernels and why; a pure function of the device and the mode."""
    backend, reason = sparse_backend(device)
    if mode == "none":
        backend, reason = None, "dense: accelerate.mode=none"
    plan = {"mode": mode, "backend": backend, "reason": reason, "layers": {}}
    for name, linear in layers.items():
        if backend is None:
            plan["layers"][name] = {"backend": "dense", "reason": reason}
        elif two_four_violations(linear.weight):
            plan["layers"][name] = {"backend": "dense", "reason": "dense: weight is not 2:4 sparse"}
        else:
            plan["layers"][name] = {"backend": backend}
    return plan


def apply_plan(model: torch.nn.Module, plan: dict) -> torch.nn.Module:
    """Swap the planned Linears' weights for semi-structured sparse tensors (GPU only)."""
    sparse = [name for name, entry in plan["layers"].items() if entry["backend"] != "dense"]
    if not sparse:
        return model
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = plan["backend"] == "cutlass"
    modules = dict(model.named_modules())
    for name in sparse:
        linear = modules[name]
        linear.weight = torch.nn.Parameter(to_sparse_semi_structured(linear.weight.detach()), requires_grad=False)
    return model


def load_accelerated(model_dir: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The accelerate artifact: the model with its saved plan applied."""
    model = load_qa_model(str(model_dir), dtype=dtype).to(device).eval()
    return apply_plan(model, read_json(Path(model_dir) / PLAN_FILE))


def relative_error(reference: torch.Tensor, output: torch.Tensor) -> float:
    return float((output.float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-12))


@torch.inference_mode()
def check_outputs(dense: torch.nn.Module, accelerated: torch.nn.Module, device: torch.device, seq_length: int) -> float:
    """Relative error of the accelerated model against the masked dense one on a sample batch."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, dense.config.vocab_size, (8, seq_length), generator=generator).to(device)
    reference, output = dense(input_ids=input_ids), accelerated(input_ids=input_ids)
    return max(relative_error(reference.start_logits, output.start_logits),
               relative_error(reference.end_logits, output.end_logits))


def run(params, sparse_dir: Path, out_dir: Path) -> dict:
    device = best_device()
    dtype = getattr(torch, params["accelerate.dtype"]) if device.type == "cuda" else torch.float32
    model = load_qa_model(str(sparse_dir), dtype=dtype).to(device).eval()
    masks = torch.load(sparse_dir / MASKS_FILE)
    modules = dict(model.named_modules())
    plan = build_plan({name: modules[name] for name in masks}, params["accelerate.mode"], device)
    for item in sparse_dir.iterdir():
        shutil.copy2(item, out_dir / item.name)
    write_json(out_dir / PLAN_FILE, plan)

    error = None
    if plan["backend"] is not None:
        accelerated = load_accelerated(out_dir, device, dtype)
        error = check_outputs(model, accelerated, device, min(128, params["benchmark.seq_length"]))
        if error > MAX_RELATIVE_ERROR:
            raise StageError(f"accelerated outputs differ from the masked dense model: "
                             f"relative error {error:.2e} > {MAX_RELATIVE_ERROR}")
    decisions = [entry["backend"] for entry in plan["layers"].values()]
    return {
        "mode": plan["mode"],
        "backend": plan["backend"] or "dense",
        "reason": plan["reason"],
        "layers_sparse": sum(d != "dense" for d in decisions),
        "layers_dense": decisions.count("dense"),
        "output_relative_error": error,
        "device": device_facts(device),
    }
