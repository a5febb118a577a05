"""accelerate: turn the sparse model into an inference model with a measured per-layer kernel plan.

On a GPU with 2:4 tensor cores and cuSPARSELt, engine/planner.py times every 2:4 Linear's shape
against cuBLAS at the benchmark's batch sizes and keeps 2:4 per layer and batch size where
accelerate.mode says so (auto: only where it measured faster, and never slower than dense end to
end). Everywhere else (no CUDA, compute capability < 8.0, mode none) every layer is planned dense
with the reason, and the stage succeeds. With accelerate.precision int8, the layers whose int8 error
on one calibration batch is small may run int8 2:4 too: per layer and batch size, the plan takes the
fastest of dense, fp16 2:4 and int8 2:4. The plan (engine/plan.py) is saved beside the model and
applied when it is loaded (engine.plan.load_accelerated); the stage
checks the accelerated outputs against the masked dense model before it ends. Plans are made for,
and applied to, the model with each layer's query, key and value fused into one Linear where its
model adapter fuses them (engine/adapters.py; the plan records the adapter's name).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from engine.adapters import adapter_for, encoder_linears, gelu_pairs
from engine.attention import use_fused_attention
from engine.calibration import MAX_LAYER_ERROR, calibrate_int8, int8_layers
from engine.common import best_device
from engine.config import EngineConfig
from engine.kernels import device_backend
from engine.models import check_sequence_length, load_tokenizer
from engine.plan import PLAN_FILE, LayerPlan, Plan, inference_model, load_accelerated
from engine.planner import (
    MAX_INT8_RELATIVE_ERROR,
    MAX_RELATIVE_ERROR,
    TUNING_BUDGET_S,
    check_eager_outputs,
    check_outputs,
    measure,
    why_dense,
)
from engine.tuning import random_ids
from pruning.masks import calibration_batches

from .common import StageError, device_facts


def calibration_inputs(params, sparse_dir: Path, features_dir: Path | None, vocab_size: int,
                       device: torch.device) -> tuple[dict[str, torch.Tensor], str]:
    """One seeded batch of model inputs for the int8 check: train features where they exist (the
    pipeline), random tokens where they do not (a bare GPU box, benchmarks/gpu_engine.py)."""
    size, seed = params["prune.calibration_batch_size"], params["seed"]
    if features_dir is not None and (features_dir / "train").exists():
        import datasets  # here, not at the top: the GPU box has no datasets

        batch = calibration_batches(datasets.load_from_disk(str(features_dir / "train")),
                                    load_tokenizer(str(sparse_dir)), 1, size, seed)[0]
        return {name: tensor.to(device) for name, tensor in batch.items()}, f"{size} train features"
    return {"input_ids": random_ids(size, 128, vocab_size, device, seed)}, f"{size} x 128 random tokens"


def int8_check(params, model, linears, sparse_dir: Path, features_dir: Path | None,
               unsmoothed: frozenset[str]) -> tuple[dict, dict, dict]:
    """(per-layer int8 errors, (smoothing, input scale) of the layers that pass, summary for the
    metrics) from one calibration batch; `unsmoothed` first tried without smoothing (calibrate_int8)."""
    inputs, source = calibration_inputs(params, sparse_dir, features_dir, model.config.vocab_size,
                                        next(model.parameters()).device)
    calibrated = calibrate_int8(model, linears, inputs, params["accelerate.int8_smoothing"], unsmoothed)
    errors = {name: error for name, (_, _, error) in calibrated.items()}
    allowed = int8_layers(errors)
    worst = max(errors, key=errors.__getitem__)
    summary = {"calibration": source, "max_layer_error": MAX_LAYER_ERROR,
               "layers_int8_ok": sum(allowed.values()), "layers_checked": len(allowed),
               "worst_layer": worst, "worst_error": round(errors[worst], 6)}
    passed = {name: (smoothing.cpu(), scale) for name, (smoothing, scale, _) in calibrated.items() if allowed[name]}
    return {name: round(error, 6) for name, error in errors.items()}, passed, summary


def run(params, sparse_dir: Path, out_dir: Path, features_dir: Path | None = None,
        tuning_budget_s: float = TUNING_BUDGET_S) -> dict:
    device = best_device()
    config = EngineConfig.from_env()  # the cuSPARSELt library and plan cache the flow started with
    mode, precision = params["accelerate.mode"], params["accelerate.precision"]
    backend, reason = device_backend(device)
    if mode == "none":
        backend, reason = None, "dense: accelerate.mode=none"
    dtype = getattr(torch, params["accelerate.dtype"]) if device.type == "cuda" else torch.float32

    model = inference_model(sparse_dir, device, dtype)
    check_sequence_length(model.config, params["benchmark.seq_length"], "params.yaml: benchmark.seq_length")
    if device.type == "cuda" and config.attention == "fused":
        use_fused_attention(model)
    linears = encoder_linears(model)
    blocked = {name: why for name, linear in linears.items() if (why := why_dense(linear.weight)) is not None}
    candidates = {name: linear for name, linear in linears.items() if name not in blocked}
    pairs = {first: second for first, second in gelu_pairs(model).items() if {first, second} <= candidates.keys()}

    int8_errors, int8_summary, int8_calibration = {}, None, {}
    if precision == "int8" and candidates:
        int8_errors, int8_calibration, int8_summary = int8_check(params, model, candidates, Path(sparse_dir),
                                                                 features_dir, frozenset(pairs.values()))
        if backend is None:
            reason = f"{reason}; int8 layers emulated exactly (float64) so evaluate scores them"
    layers = {}
    for name, linear in linears.items():
        smoothing, input_scale = int8_calibration.get(name, (None, None))
        layers[name] = LayerPlan(shape=tuple(linear.weight.shape), precision="fp16" if smoothing is None else "int8",
                                 reason=reason if backend is None else blocked.get(name),
                                 input_scale=input_scale, smoothing=smoothing)
    if int8_summary is not None:  # after a GELU, calibration keeps no smoothing only where the check passes
        int8_summary["layers_unsmoothed"] = sum(layer.unsmoothed for layer in layers.values())
    plan = Plan(mode=mode, precision=precision, backend=backend, reason=reason,
                dtype=str(dtype).removeprefix("torch."), compiled=params["accelerate.compile"],
                batch_sizes=params["benchmark.batch_sizes"], seq_length=params["benchmark.seq_length"],
                layers=layers, int8_layer_error=int8_errors, device=device_facts(device), gelu_pairs=pairs,
                engine=config.record(), adapter=adapter_for(model).name)
    if backend is not None and candidates:
        measure(plan, model, params["accelerate.max_alg_id"], tuning_budget_s, config)

    for item in sparse_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, out_dir / item.name)
    plan.save(out_dir / PLAN_FILE)

    metrics = plan.summary()
    if int8_summary is not None:
        metrics["int8"] = int8_summary
    metrics["output_relative_error"] = None
    errors = {}
    if plan.sparse_layers():
        errors = check_outputs(model, load_accelerated(out_dir, device, dtype, config=config), plan)
    if plan.sparse_layers(eager=True):
        errors |= check_eager_outputs(model, load_accelerated(out_dir, device, dtype, eager=True, config=config), plan)
    if errors:
        metrics["output_relative_error"] = {key: round(err, 6) for key, err in errors.items()}
        worst = max(errors, key=errors.__getitem__)
        bound = MAX_INT8_RELATIVE_ERROR if int8_calibration else MAX_RELATIVE_ERROR
        if errors[worst] > bound:
            raise StageError(f"accelerated outputs differ from the masked dense model at {worst}: relative error "
                             f"{errors[worst]:.2e} > {bound} (plan in {out_dir / PLAN_FILE})")
    metrics["device"] = device_facts(device)
    return metrics
