"""accelerate: turn the sparse model into an inference model with a measured per-layer kernel plan.

On a GPU with 2:4 tensor cores and cuSPARSELt, every 2:4 Linear of the encoder is timed (once per
weight shape) against cuBLAS at the benchmark's token counts (batch x sequence), each cuSPARSELt
kernel config in turn; `accelerate.mode=auto` keeps 2:4 per layer and batch-size bucket only where
it measured faster, then times the whole model (as CUDA graphs, of the torch.compile'd model with
`accelerate.compile`) dense, per-layer and all-2:4 per bucket and keeps the fastest, so the result
is never slower than dense at the shapes it was made for. Everywhere else (no CUDA, compute
capability < 8.0, mode none) every layer is planned dense with the reason, and the stage succeeds.
The plan is saved beside the model and applied when it is loaded; the stage checks the accelerated
outputs against the masked dense model before it ends. Plans are made for, and applied to, the
model with each BERT layer's query, key and value fused into one Linear (attention.fuse_qkv).
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import int8
from .attention import capture_context, fuse_qkv, use_fused_attention
from .common import StageError, best_device, device_facts, read_json, relative_error, write_json
from .modeling import encoder_linears, load_qa_model, load_tokenizer
from .prune import calibration_batches, two_four_violations
from .sparse_engine import (
    CudaGraphRunner,
    best_alg,
    choose_alg,
    choose_variant,
    device_backend,
    median_ms,
    swap_linears,
    tune_linears,
    token_buckets,
)

PLAN_FILE = "plan.json"
# The int8 layers' per-input-channel smoothing factors (stages/int8.py), beside the plan.
SMOOTHING_FILE = "int8_smoothing.safetensors"
MAX_RELATIVE_ERROR = 2e-3
# auto keeps a layer's 2:4 kernel only when it beats cuBLAS by this much in isolation (timing noise
# is ~1%), and a whole-model variant only when it beats dense end to end by this much.
MIN_LAYER_SPEEDUP = 1.02
MIN_MODEL_SPEEDUP = 1.01
# Every cuSPARSELt config is timed at the largest bucket, only the fastest few there at the others:
# an fp16 config costs ~1 s to time on an H100, and the ranking barely moves with the token count.
TOP_CONFIGS = 3
# int8 outputs differ from the fp16 model by the quantization itself (~2e-2 on bert-base logits).
MAX_INT8_RELATIVE_ERROR = 5e-2
MODEL_TIMING_WARMUP, MODEL_TIMING_REPEATS = 3, 20
# cuSPARSELt's smallest fp16/bf16 sparse operand dimension.
SPARSE_DIM_MULTIPLE = 16
VARIANTS = ("dense", "per_layer", "all_2of4")

Kernels = dict[int, "int | None"]  # token bucket -> cuSPARSELt alg_id, None = dense matmul


# --------------------------------------------------------------------------- pure plan logic
def shape_key(weight_shape, precision: str = "fp16") -> str:
    """A weight shape's key in the plan's shape_timings: "outxin", "int8:outxin" for the int8 kernel."""
    out_features, in_features = weight_shape
    return f"{'int8:' if precision == 'int8' else ''}{out_features}x{in_features}"


def why_dense(weight: torch.Tensor) -> str | None:
    """Why a layer cannot take the 2:4 kernel, or None when it can."""
    if any(dim % SPARSE_DIM_MULTIPLE for dim in weight.shape):
        return f"dense: shape {tuple(weight.shape)} is not a multiple of {SPARSE_DIM_MULTIPLE} (cuSPARSELt)"
    if two_four_violations(weight):
        return "dense: weight is not 2:4 sparse"
    return None


def layer_kernels(shapes: dict[str, str], timings: dict[str, dict[int, dict]], mode: str) -> dict[str, Kernels]:
    """Per layer and bucket, the kernel each layer's measured shape earned (see choose_alg)."""
    return {
        name: {bucket: choose_alg(timing, mode, MIN_LAYER_SPEEDUP) for bucket, timing in timings[shape].items()}
        for name, shape in shapes.items()
    }


def variant_kernels(variant: str, bucket: int, per_layer: dict[str, Kernels], shapes: dict[str, str],
                    timings: dict[str, dict[int, dict]]) -> dict[str, int | None]:
    """Each layer's kernel at one bucket under a whole-model variant."""
    if variant == "dense":
        return {name: None for name in per_layer}
    if variant == "per_layer":
        return {name: kernels[bucket] for name, kernels in per_layer.items()}
    return {name: best_alg(timings[shapes[name]][bucket]) for name in per_layer}


def distinct_variants(bucket: int, per_layer: dict[str, Kernels], shapes: dict[str, str],
                      timings: dict[str, dict[int, dict]]) -> list[str]:
    """The variants worth timing at a bucket: the ones whose kernels differ."""
    seen, kept = [], []
    for variant in VARIANTS:
        kernels = variant_kernels(variant, bucket, per_layer, shapes, timings)
        if kernels not in seen:
            seen.append(kernels)
            kept.append(variant)
    return kept


def final_kernels(mode: str, per_layer: dict[str, Kernels], shapes: dict[str, str],
                  timings: dict[str, dict[int, dict]], model_ms: dict[int, dict[str, float]]) -> tuple[dict, dict]:
    """(kernels per layer, variant per bucket): auto takes each bucket's fastest whole-model variant;
    all and none keep the per-layer choice (timed as "dense" when it is the same kernels)."""
    chosen = {bucket: (choose_variant(ms, MIN_MODEL_SPEEDUP) if mode == "auto" else
                       "per_layer" if "per_layer" in ms else "dense")
              for bucket, ms in model_ms.items()}
    kernels: dict[str, Kernels] = {name: {} for name in per_layer}
    for bucket, variant in chosen.items():
        for name, alg_id in variant_kernels(variant, bucket, per_layer, shapes, timings).items():
            kernels[name][bucket] = alg_id
    return kernels, chosen


def sparse_layer_names(plan: dict) -> list[str]:
    return [name for name, entry in plan["layers"].items()
            if any(alg_id is not None for alg_id in entry["kernels"].values())]


def plan_kernels(plan: dict) -> dict[str, Kernels]:
    """The saved plan's kernels of the layers that run 2:4 somewhere (JSON keys back to ints)."""
    return {name: {int(bucket): alg_id for bucket, alg_id in plan["layers"][name]["kernels"].items()}
            for name in sparse_layer_names(plan)}


def summarize(plan: dict) -> dict:
    """The stage's metrics: counts of 2:4 vs dense layers, per bucket the whole-model and per-layer timings."""
    seq = plan["seq_length"]
    layers = plan["layers"]
    sparse = sparse_layer_names(plan)
    metrics = {
        "mode": plan["mode"],
        "precision": plan["precision"],
        "backend": plan["backend"] or "dense",
        "reason": plan["reason"],
        "dtype": plan["dtype"],
        "layers_2of4": len(sparse),
        "layers_dense": len(layers) - len(sparse),
    }
    if not plan["model_ms"]:
        return metrics
    metrics["by_batch"] = {}
    for bucket, ms in plan["model_ms"].items():
        chosen = plan["variants"][bucket]
        metrics["by_batch"][f"bs{int(bucket) // seq}"] = {
            "variant": chosen,
            "layers_2of4": sum(layers[name]["kernels"].get(bucket) is not None for name in layers),  # none if blocked
            "model_dense_ms": round(ms["dense"], 4),
            "model_accelerated_ms": round(ms[chosen], 4),
            "model_speedup": round(ms["dense"] / ms[chosen], 3),
        }
    metrics["layers"] = {}
    for name, entry in layers.items():
        if "reason" in entry:
            metrics["layers"][name] = {"kernel": "dense", "reason": entry["reason"]}
            continue
        per_bucket = {}
        for bucket, alg_id in entry["kernels"].items():
            timing = plan["shape_timings"][shape_key(entry["shape"].split("x"), entry["precision"])][bucket]
            sparse_ms = min(timing["sparse_ms"].values()) if timing["sparse_ms"] else None
            per_bucket[f"bs{int(bucket) // seq}"] = {
                "kernel": "dense" if alg_id is None else f"cusparselt {entry['precision']} alg_id {alg_id}",
                "dense_ms": round(timing["dense_ms"], 4),
                "sparse_ms": None if sparse_ms is None else round(sparse_ms, 4),
                "speedup": None if sparse_ms is None else round(timing["dense_ms"] / sparse_ms, 3),
            }
        metrics["layers"][name] = per_bucket
    return metrics


# --------------------------------------------------------------------------- GPU measurement
def top_configs(timing: dict, count: int = TOP_CONFIGS) -> list[int]:
    """The `count` fastest cuSPARSELt configs of a tune_linears result."""
    return sorted(timing["sparse_ms"], key=timing["sparse_ms"].__getitem__)[:count]


def measure_shapes(layers: dict[str, torch.nn.Linear], buckets: list[int], dtype: torch.dtype,
                   max_alg_id: int, precision: str = "fp16") -> tuple[dict, list[str]]:
    """Per weight shape (shape_key) and bucket: cuBLAS vs cuSPARSELt configs, and notes on failures.

    All configs 0..max_alg_id run at the largest bucket; the TOP_CONFIGS fastest there run at the others.
    """
    if not layers:
        return {}, []
    int8 = precision == "int8"
    shapes = sorted({tuple(linear.weight.shape) for linear in layers.values()})
    reference = buckets[-1]
    results, notes = tune_linears([(*shape, reference) for shape in shapes], dtype, max_alg_id=max_alg_id, int8=int8)
    others = [(*shape, bucket) for shape in shapes for bucket in buckets[:-1]]
    if others:
        search_failed = any(timing["search"].startswith("failed") for timing in results.values())
        more, more_notes = tune_linears(others, dtype, try_search=not search_failed, max_alg_id=max_alg_id, int8=int8,
                                        alg_ids={p: top_configs(results[(*p[:2], reference)]) for p in others})
        results, notes = {**results, **more}, notes + more_notes
    return {shape_key(shape, precision): {bucket: results[(*shape, bucket)] for bucket in buckets}
            for shape in shapes}, notes


def random_ids(batch: int, seq_length: int, vocab_size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq_length), generator=generator).to(device)


def time_model_variants(dense_model: torch.nn.Module, per_layer: dict[str, Kernels], shapes: dict[str, str],
                        timings: dict, seq_length: int, int8_calibration: dict[str, tuple[torch.Tensor, float]],
                        compile: bool) -> dict[int, dict[str, float]]:
    """Whole-model latency (ms, CUDA graph replay, compiled or not) per bucket of each distinct variant."""
    model = swap_linears(copy.deepcopy(dense_model), {name: {} for name in per_layer}, keep_dense=True,
                         int8_calibration=int8_calibration)
    modules = dict(model.named_modules())
    vocab = dense_model.config.vocab_size
    result = {}
    for bucket in tqdm(sorted(next(iter(timings.values()))), desc="timing whole-model variants", unit="batch size"):
        input_ids = random_ids(bucket // seq_length, seq_length, vocab, next(model.parameters()).device)
        result[bucket] = {}
        for variant in distinct_variants(bucket, per_layer, shapes, timings):
            for name, alg_id in variant_kernels(variant, bucket, per_layer, shapes, timings).items():
                modules[name].kernels = {bucket: alg_id}
                modules[name].buckets = [bucket]
            runner = CudaGraphRunner(model, capture_context=capture_context, compile=compile)
            result[bucket][variant] = median_ms(lambda: runner(input_ids=input_ids), MODEL_TIMING_WARMUP,
                                                MODEL_TIMING_REPEATS, input_ids.device)
            del runner
            torch.compiler.reset()  # each variant recompiles the same forward: stay under the recompile limit
            torch.cuda.empty_cache()
    return result


def logits_error(reference, output) -> float:
    return max(relative_error(reference.start_logits, output.start_logits),
               relative_error(reference.end_logits, output.end_logits))


@torch.inference_mode()
def check_outputs(dense: torch.nn.Module, accelerated: CudaGraphRunner, plan: dict) -> dict[str, float]:
    """Relative error of the accelerated logits vs the masked dense model, per bucket that runs 2:4.

    Each such bucket runs eagerly at seq_length - 1 (an odd token count: the padding path), and the
    smallest one also as its captured CUDA graph, against the dense model run the same way: compiled
    models round differently from eager ones (fused ops keep float32 in between), by more than the
    bound on an H200 (2.6e-3 for fp16 bert-base), and that is not the 2:4 kernels' error.
    """
    seq, vocab = plan["seq_length"], dense.config.vocab_size
    device = next(dense.parameters()).device
    sparse_buckets = sorted({int(bucket) for name in sparse_layer_names(plan)
                             for bucket, alg_id in plan["layers"][name]["kernels"].items() if alg_id is not None})
    errors = {}
    for bucket in sparse_buckets:
        batch = bucket // seq
        input_ids = random_ids(batch, seq - 1, vocab, device, seed=bucket)
        errors[f"bs{batch}_seq{seq - 1}_eager"] = logits_error(dense(input_ids=input_ids),
                                                               accelerated.model(input_ids=input_ids))
    if sparse_buckets:
        batch = sparse_buckets[0] // seq
        input_ids = random_ids(batch, seq, vocab, device, seed=1)
        reference = CudaGraphRunner(dense, capture_context=capture_context, compile=plan["compiled"])
        errors[f"bs{batch}_seq{seq}_graphed"] = logits_error(reference(input_ids=input_ids),
                                                             accelerated(input_ids=input_ids))
        del reference
    return errors


# --------------------------------------------------------------------------- stage
def inference_model(model_dir: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model as accelerate plans it and load_accelerated applies the plan (benchmark times dense
    the same way): in eval mode, query/key/value fused (attention.fuse_qkv), so the plan's layer
    names always match."""
    return fuse_qkv(load_qa_model(str(model_dir), dtype=dtype).to(device).eval())


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


def int8_check(params, model, linears, sparse_dir: Path, features_dir: Path | None) -> tuple[dict, dict, dict]:
    """(per-layer int8 errors, (smoothing, input scale) of the layers that pass, summary for the
    metrics) from one calibration batch."""
    inputs, source = calibration_inputs(params, sparse_dir, features_dir, model.config.vocab_size,
                                        next(model.parameters()).device)
    calibrated = int8.calibrate(model, linears, inputs, params["accelerate.int8_smoothing"])
    errors = {name: error for name, (_, _, error) in calibrated.items()}
    allowed = int8.int8_layers(errors)
    worst = max(errors, key=errors.__getitem__)
    summary = {"calibration": source, "max_layer_error": int8.MAX_LAYER_ERROR,
               "layers_int8_ok": sum(allowed.values()), "layers_checked": len(allowed),
               "worst_layer": worst, "worst_error": round(errors[worst], 6)}
    passed = {name: (smoothing.cpu(), scale) for name, (smoothing, scale, _) in calibrated.items() if allowed[name]}
    return {name: round(error, 6) for name, error in errors.items()}, passed, summary


def run(params, sparse_dir: Path, out_dir: Path, features_dir: Path | None = None) -> dict:
    device = best_device()
    mode, precision = params["accelerate.mode"], params["accelerate.precision"]
    backend, reason = device_backend(device)
    if mode == "none":
        backend, reason = None, "dense: accelerate.mode=none"
    dtype = getattr(torch, params["accelerate.dtype"]) if device.type == "cuda" else torch.float32
    seq_length = params["benchmark.seq_length"]
    buckets = token_buckets(params["benchmark.batch_sizes"], seq_length)

    model = inference_model(sparse_dir, device, dtype)
    if device.type == "cuda":
        use_fused_attention(model)
    linears = encoder_linears(model)
    blocked = {name: why for name, linear in linears.items() if (why := why_dense(linear.weight)) is not None}
    candidates = {name: linear for name, linear in linears.items() if name not in blocked}

    int8_errors, int8_summary, int8_calibration = {}, None, {}
    if precision == "int8" and candidates:
        int8_errors, int8_calibration, int8_summary = int8_check(params, model, candidates, Path(sparse_dir),
                                                                 features_dir)
        if backend is None:
            reason = f"{reason}; int8 layers emulated exactly (float64) so evaluate scores them"
    layer_precision = {name: "int8" if name in int8_calibration else "fp16" for name in candidates}
    shapes = {name: shape_key(linear.weight.shape, layer_precision[name]) for name, linear in candidates.items()}

    timings, notes, model_ms, variants, kernels = {}, [], {}, {}, {name: {} for name in candidates}
    if backend is not None and candidates:
        for kind in ("fp16", "int8"):
            kind_timings, kind_notes = measure_shapes(
                {name: linear for name, linear in candidates.items() if layer_precision[name] == kind},
                buckets, dtype, params["accelerate.max_alg_id"], kind)
            timings, notes = {**timings, **kind_timings}, notes + kind_notes
        per_layer = layer_kernels(shapes, timings, mode)
        model_ms = time_model_variants(model, per_layer, shapes, timings, seq_length, int8_calibration,
                                       params["accelerate.compile"])
        kernels, variants = final_kernels(mode, per_layer, shapes, timings, model_ms)

    plan = {
        "mode": mode,
        "backend": backend,
        "reason": reason,
        "dtype": str(dtype).removeprefix("torch."),
        "batch_sizes": params["benchmark.batch_sizes"],
        "seq_length": seq_length,
        "token_buckets": buckets,
        "device": device_facts(device),
        "kernel_timing_notes": notes,
        "precision": precision,
        "compiled": params["accelerate.compile"],
        "int8_layer_error": int8_errors,
        "variants": {str(b): v for b, v in variants.items()},
        "model_ms": {str(b): ms for b, ms in model_ms.items()},
        "shape_timings": {shape: {str(b): {**t, "sparse_ms": {str(a): ms for a, ms in t["sparse_ms"].items()}}
                                  for b, t in per_bucket.items()} for shape, per_bucket in timings.items()},
        "layers": {},
    }
    for name, linear in linears.items():
        entry = {"shape": shape_key(linear.weight.shape), "precision": layer_precision.get(name, "fp16"),
                 "kernels": {str(b): a for b, a in kernels.get(name, {}).items()}}
        if name in int8_calibration:
            entry["input_scale"] = int8_calibration[name][1]
        if backend is None or name in blocked:
            entry["reason"] = reason if backend is None else blocked[name]
        plan["layers"][name] = entry

    for item in sparse_dir.iterdir():
        if item.is_file():
            shutil.copy2(item, out_dir / item.name)
    if int8_calibration:
        save_file({name: smoothing.clone() for name, (smoothing, _) in int8_calibration.items()},  # unshared
                  str(out_dir / SMOOTHING_FILE))
    write_json(out_dir / PLAN_FILE, plan)

    metrics = summarize(plan)
    if int8_summary is not None:
        metrics["int8"] = int8_summary
    metrics["output_relative_error"] = None
    if sparse_layer_names(plan):
        errors = check_outputs(model, load_accelerated(out_dir, device, dtype), plan)
        metrics["output_relative_error"] = {key: round(err, 6) for key, err in errors.items()}
        worst = max(errors, key=errors.__getitem__)
        bound = MAX_INT8_RELATIVE_ERROR if int8_calibration else MAX_RELATIVE_ERROR
        if errors[worst] > bound:
            raise StageError(f"accelerated outputs differ from the masked dense model at {worst}: relative error "
                             f"{errors[worst]:.2e} > {bound} (plan in {out_dir / PLAN_FILE})")
    metrics["device"] = device_facts(device)
    return metrics


def load_accelerated(model_dir: Path, device: torch.device, dtype: torch.dtype, graphs: bool = True) -> torch.nn.Module:
    """The accelerate artifact: the model with its plan's 2:4 Linears swapped in.

    With graphs, the shapes the plan was tuned for (batch sizes x seq_length) replay CUDA graphs (of
    the torch.compile'd model where the plan was timed compiled), any other shape runs eagerly.
    Under a dense plan it is the plain model; without a CUDA device that has 2:4 kernels too,
    except that layers the plan puts on int8 compute the int8 kernel's math exactly
    (stages/int8.py), so evaluate scores what the GPU would.
    """
    model_dir = Path(model_dir)
    model = inference_model(model_dir, device, dtype)
    plan = read_json(model_dir / PLAN_FILE)
    input_scales = {name: entry["input_scale"] for name, entry in plan["layers"].items() if "input_scale" in entry}
    smoothing = load_file(str(model_dir / SMOOTHING_FILE)) if input_scales else {}
    int8_calibration = {name: (smoothing[name], scale) for name, scale in input_scales.items()}
    if device_backend(device)[0] is None:
        return int8.emulate(model, int8_calibration)
    use_fused_attention(model)
    kernels = plan_kernels(plan)
    if not kernels:
        return model
    swap_linears(model, kernels, int8_calibration=int8_calibration)
    if not graphs:
        return model
    tuned = {(batch, plan["seq_length"]) for batch in plan["batch_sizes"]}
    return CudaGraphRunner(model, capturable=lambda shape: tuple(shape) in tuned, capture_context=capture_context,
                           compile=plan["compiled"])
