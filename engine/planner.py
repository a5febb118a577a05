"""Making a plan on a GPU: time every 2:4 layer's shape against cuBLAS (fp16 2:4, and int8 2:4 on the
layers that passed the int8 check), choose per layer and batch size, then time the whole model under
each distinct choice and keep the fastest.

`auto` keeps, per layer and batch size, the fastest 2:4 kernel (fp16 or int8) only where it measured
faster than dense, then times the whole model (as CUDA graphs, of the torch.compile'd model with
`compiled`) under each distinct variant per batch size and keeps the fastest, so the result is never
slower than dense at the shapes it was made for. The variants, at most five per batch size (each is
a compile and a capture): dense_masked (every layer dense: the 2:4-masked model the plan is made on,
not the unpruned one); per_layer (that choice); fp16_2of4 (every layer's fastest fp16
kernel: per-layer timings leave out int8's quantization pass, and at batch 16 on an H200 fp16 2:4
beat int8 2:4 end to end); int8_fused (per_layer, but int8 only where the quantization fuses into
the op before: the attention output projection's input comes from the attention kernel, so there it
is a pass of its own); int8_gelu (int8_fused, and each pair of Plan.gelu_fusions on int8 with the
first layer's GELU epilogue quantizing for the second: no GELU or quantization pass between them;
the epilogue's configs are timed apart, as the INT8_GELU precision, since it changes which is fastest).
`all` takes each layer's fastest kernel everywhere; `none` is dense.

A batch size's variants are timed interleaved, in rounds (engine/timing.py), and twice: replayed
as CUDA graphs (the plan's kernels, how the model is served) and called eagerly (its eager_kernels,
load_accelerated(eager=True)), where each op's host work counts: at small batches an int8 layer's
extra quantization launch can cost more host time than its kernel saves. Eager timing needs the
plan cache (without it every 2:4 call plans on the host, which costs more than the sparse matmul
saves): auto then keeps the eager model dense.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math

import torch
from tqdm.auto import tqdm

from .adapters import unfused_inputs
from .attention import capture_context
from .common import relative_error
from .config import PLAN_CACHE_ENV, EngineConfig
from .graphs import CudaGraphRunner
from .kernels import INT8_GELU, Int8PassthroughGelu, Kernel, PlannedMM, named, shape_name, swap_linears
from .plan import DENSE_MASKED, LayerPlan, Plan, replace_gelu_activations
from .plan_cache import planned_matmul
from .sparsity import two_four_violations
from .timing import ROUNDS, TRUSTED_HALF_WIDTH, interleaved, ratio_interval
from .tuning import best_alg, measure_shapes, random_ids

# auto keeps a layer's 2:4 kernel only when it beats cuBLAS by this much in isolation (more than timing
# noise), and a whole-model variant only when it beats dense end to end by this much.
MIN_LAYER_SPEEDUP = 1.02
MIN_MODEL_SPEEDUP = 1.01
MAX_RELATIVE_ERROR = 2e-3
# int8 outputs differ from the fp16 model by the quantization itself (~2e-2 on bert-base logits).
MAX_INT8_RELATIVE_ERROR = 5e-2
MODEL_TIMING_WARMUP, MODEL_TIMING_REPEATS = 3, 20
# cuSPARSELt's smallest fp16/bf16 sparse operand dimension.
SPARSE_DIM_MULTIPLE = 16
# Seconds of kernel-config timing per precision, shared by every shape and batch size (tune_linears):
# an fp16 config is slow to time (host planning), and cuSPARSELt 0.10 offers dozens per problem.
TUNING_BUDGET_S = 600.0

ByPrecision = dict[str, dict]  # precision -> tune_linears result of one shape at one batch size
LayerTimings = dict[str, dict[int, ByPrecision]]  # layer -> batch size -> its shape's results
BatchKernels = dict[int, "Kernel | None"]  # batch size -> kernel, None = dense
VariantKernels = dict[str, dict[str, BatchKernels]]  # whole-model variant -> layer -> its kernels


def why_dense(weight: torch.Tensor) -> str | None:
    """Why a layer cannot take the 2:4 kernel, or None when it can."""
    if any(dim % SPARSE_DIM_MULTIPLE for dim in weight.shape):
        return f"dense: shape {tuple(weight.shape)} is not a multiple of {SPARSE_DIM_MULTIPLE} (cuSPARSELt)"
    if two_four_violations(weight):
        return "dense: weight is not 2:4 sparse"
    return None


def fastest_kernel(by_precision: ByPrecision) -> Kernel | None:
    """The fastest 2:4 kernel over the precisions timed, or None when no config ran."""
    kernels = [(timing["sparse_ms"][alg_id], Kernel(precision, alg_id))
               for precision, timing in by_precision.items() if (alg_id := best_alg(timing)) is not None]
    return min(kernels)[1] if kernels else None


def kernel_speedup(by_precision: ByPrecision, kernel: Kernel) -> float:
    timing = by_precision[kernel.kind]
    return timing["dense_ms"] / timing["sparse_ms"][kernel.alg_id]


def choose_kernel(by_precision: ByPrecision, mode: str, min_speedup: float) -> Kernel | None:
    """The 2:4 kernel a layer runs at one batch size, or None for the dense matmul.

    auto keeps the fastest kernel only where it beats dense by `min_speedup`; all takes the fastest
    wherever one ran; none is always dense.
    """
    best = fastest_kernel(by_precision)
    if mode == "none" or best is None:
        return None
    if mode == "all" or kernel_speedup(by_precision, best) >= min_speedup:
        return best
    return None


def choose_variant(latency_ms: dict[str, float], min_speedup: float, baseline: str = DENSE_MASKED) -> str:
    """The fastest of several whole-model variants; the baseline unless another beats it by min_speedup."""
    best = min(latency_ms, key=latency_ms.__getitem__)
    return best if latency_ms[baseline] / latency_ms[best] >= min_speedup else baseline


def layer_kernels(timings: LayerTimings, mode: str) -> dict[str, BatchKernels]:
    """Per layer and batch size, the kernel each layer's measured shape earned (see choose_kernel)."""
    return {name: {batch: choose_kernel(by_precision, mode, MIN_LAYER_SPEEDUP)
                   for batch, by_precision in per_batch.items()}
            for name, per_batch in timings.items()}


def gelu_fused(chosen: dict[str, BatchKernels], timings: LayerTimings, fusions: dict[str, str],
               epilogue_timings: dict[str, dict[int, dict]]) -> dict[str, BatchKernels]:
    """`chosen` with each pair of `fusions` (first layer -> second) on int8 at every batch size where
    the first has INT8_GELU timings and the second int8 ones: the first on its fastest INT8_GELU
    config, the second on its fastest int8 config."""
    fused = {name: dict(per_batch) for name, per_batch in chosen.items()}
    for first, second in fusions.items():
        if first not in fused or second not in fused:
            continue
        for batch in fused[second]:
            first_alg = best_alg(epilogue_timings[first][batch]) if first in epilogue_timings else None
            second_alg = best_alg(timings[second][batch]["int8"]) if "int8" in timings[second][batch] else None
            if first_alg is not None and second_alg is not None:
                fused[first][batch], fused[second][batch] = Kernel(INT8_GELU, first_alg), Kernel("int8", second_alg)
    return fused


def variant_kernels(mode: str, per_layer: dict[str, BatchKernels], timings: LayerTimings,
                    unfused: set[str], fusions: dict[str, str] | None = None,
                    epilogue_timings: dict[str, dict[int, dict]] | None = None) -> VariantKernels:
    """Each whole-model variant's kernel per layer and batch size (see the module docstring);
    int8_fused is per_layer with the layers in `unfused` kept off int8 (their fp16 choice instead):
    there the quantization is a pass of its own, which the per-layer timings leave out. int8_gelu
    (only with `fusions` and the first layers' INT8_GELU timings): int8_fused, then gelu_fused."""
    def fp16_kernel(name: str, batch: int, fp16_mode: str) -> Kernel | None:
        return choose_kernel({"fp16": timings[name][batch]["fp16"]}, fp16_mode, MIN_LAYER_SPEEDUP)

    def fused(name: str, batch: int, kernel: Kernel | None) -> Kernel | None:
        int8_unfused = name in unfused and kernel is not None and kernel.kind == "int8"
        return fp16_kernel(name, batch, mode) if int8_unfused else kernel

    variants = {
        DENSE_MASKED: {name: dict.fromkeys(kernels) for name, kernels in per_layer.items()},
        "per_layer": per_layer,
        "fp16_2of4": {name: {batch: fp16_kernel(name, batch, "all") for batch in kernels}
                      for name, kernels in per_layer.items()},
        "int8_fused": {name: {batch: fused(name, batch, kernel) for batch, kernel in kernels.items()}
                       for name, kernels in per_layer.items()},
    }
    if fusions and epilogue_timings:
        variants["int8_gelu"] = gelu_fused(variants["int8_fused"], timings, fusions, epilogue_timings)
    return variants


def at_batch(kernels: dict[str, BatchKernels], batch: int) -> dict[str, Kernel | None]:
    return {name: per_batch[batch] for name, per_batch in kernels.items()}


def distinct_variants(batch: int, variants: VariantKernels) -> list[str]:
    """The variants worth timing at a batch size: the ones whose kernels differ."""
    seen, kept = [], []
    for variant, kernels in variants.items():
        chosen = at_batch(kernels, batch)
        if chosen not in seen:
            seen.append(chosen)
            kept.append(variant)
    return kept


def final_kernels(mode: str, variants: VariantKernels,
                  model_ms: dict[int, dict[str, float]]) -> tuple[dict[str, BatchKernels], dict[int, str]]:
    """(kernels per layer, variant per batch size): auto takes each batch size's fastest whole-model
    variant; all and none keep the per-layer choice (timed as dense_masked when it is the same kernels)."""
    chosen = {batch: (choose_variant(ms, MIN_MODEL_SPEEDUP) if mode == "auto" else
                      "per_layer" if "per_layer" in ms else DENSE_MASKED)
              for batch, ms in model_ms.items()}
    kernels = {name: {batch: variants[variant][name][batch] for batch, variant in chosen.items()}
               for name in variants[DENSE_MASKED]}
    return kernels, chosen


def precisions(layer: LayerPlan) -> list[str]:
    """What a layer's 2:4 kernel may compute in: int8 too where the layer passed the int8 check."""
    return ["fp16", "int8"] if layer.precision == "int8" else ["fp16"]


def report_kernel_timings(precision: str, timings: dict) -> None:
    """One line per shape and batch size as kernel timing ends, so that a run cut short still shows them."""
    for shape, per_batch in timings.items():
        for batch, timing in per_batch.items():
            best = best_alg(timing)
            found = "no config ran" if best is None else (
                f"best alg_id {best} {timing['sparse_ms'][best]:.4f} ms (x{timing['dense_ms'] / timing['sparse_ms'][best]:.3f})")
            tqdm.write(f"{precision} {shape} bs{batch}: dense {timing['dense_ms']:.4f} ms, {found}; "
                       f"{len(timing['sparse_ms'])} of {timing['alg_ids_offered']} configs timed, {timing['search']}")


def layer_timings(plan: Plan, names) -> LayerTimings:
    """Per layer and batch size, its shape's timings in each precision it may run alone (int8 only
    where it passed the int8 check)."""
    timings = {}
    for name in names:
        shape = shape_name(plan.layers[name].shape)
        timings[name] = {batch: {p: plan.shape_timings[p][shape][batch] for p in precisions(plan.layers[name])}
                         for batch in plan.batch_sizes}
    return timings


def epilogue_layer_timings(plan: Plan, names) -> dict[str, dict[int, dict]]:
    """Per layer of `names` and batch size, its shape's INT8_GELU timing, where one was made."""
    per_shape = plan.shape_timings.get(INT8_GELU, {})
    return {name: per_shape[shape_name(plan.layers[name].shape)] for name in names
            if shape_name(plan.layers[name].shape) in per_shape}


def layers_to_time(plan: Plan, candidates: dict[str, torch.nn.Linear], precision: str,
                   plan_cache: bool) -> dict[str, torch.nn.Linear]:
    """The layers whose shapes a precision's kernels are timed on: fp16 all, int8 those that passed
    the int8 check, INT8_GELU the first layers of Plan.gelu_fusions where the plan cache is on (the
    epilogue runs through it)."""
    if precision == INT8_GELU:
        fusions = plan.gelu_fusions() if plan_cache else {}
        return {name: linear for name, linear in candidates.items() if name in fusions}
    return {name: linear for name, linear in candidates.items() if precision in precisions(plan.layers[name])}


def measure(plan: Plan, model: torch.nn.Module, max_alg_id: int, tuning_budget_s: float = TUNING_BUDGET_S,
            config: EngineConfig | None = None) -> None:
    """Fill in the plan's timings, kernels and variants (in place) for the layers not left dense,
    on the GPU, with the model the plan is for: fp16 2:4 on every such layer, int8 2:4 too on the
    layers that passed the int8 check, and INT8_GELU on the first layers of Plan.gelu_fusions.
    config None: EngineConfig.from_env() (the plan records the one it was made with, Plan.engine)."""
    config = config or EngineConfig.from_env()
    planned = planned_matmul(config)
    candidates = {name: model.get_submodule(name) for name, layer in plan.layers.items() if layer.reason is None}
    plan.tuning = {"max_alg_id": max_alg_id, "budget_s_per_precision": tuning_budget_s, "alg_ids_offered": {}}
    plan.shape_timings = {}
    for precision in ("fp16", "int8", INT8_GELU):
        timed = layers_to_time(plan, candidates, precision, planned is not None)
        if not timed:
            continue
        timings, notes = measure_shapes(timed, plan.batch_sizes, plan.seq_length, getattr(torch, plan.dtype),
                                        max_alg_id, precision, tuning_budget_s, config)
        if timings:
            plan.shape_timings[precision] = timings
            report_kernel_timings(precision, timings)
            plan.tuning["alg_ids_offered"][precision] = max(
                timing["alg_ids_offered"] for per_batch in timings.values() for timing in per_batch.values())
        plan.kernel_timing_notes += notes
    timings = layer_timings(plan, candidates)
    fusions = plan.gelu_fusions()
    variants = variant_kernels(plan.mode, layer_kernels(timings, plan.mode), timings, unfused_inputs(model, candidates),
                               fusions, epilogue_layer_timings(plan, fusions))
    # Both timings before any kernel is chosen: the timed models take their GELU pairs from
    # Plan.gelu_fusions, which a chosen kernel set without int8_gelu would empty.
    plan.model_ms = time_model_variants(model, plan, variants, planned)
    plan.eager_model_ms = time_model_variants(model, plan, variants, planned, eager=True) if planned else {}
    kernels, plan.variants = final_kernels(plan.mode, variants, plan.model_ms)
    for name, layer_kernel in kernels.items():
        plan.layers[name].kernels = layer_kernel
    if plan.eager_model_ms:
        eager_kernels, plan.eager_variants = final_kernels(plan.mode, variants, plan.eager_model_ms)
    elif plan.mode == "auto":  # each eager 2:4 call would plan on the host: dense is faster
        eager_kernels = {name: dict.fromkeys(plan.batch_sizes) for name in kernels}
        plan.eager_variants = dict.fromkeys(plan.batch_sizes, DENSE_MASKED)
        plan.kernel_timing_notes.append("eager: dense at every batch size (without the plan cache "
                                        f"({PLAN_CACHE_ENV}=1) each 2:4 call plans on the host)")
    else:  # all: 2:4 when run eagerly too, as asked (untimed: too slow without the plan cache)
        eager_kernels, plan.eager_variants = kernels, dict(plan.variants)
    for name, layer_kernel in eager_kernels.items():
        plan.layers[name].eager_kernels = layer_kernel


def time_model_variants(masked_model: torch.nn.Module, plan: Plan, variants: VariantKernels,
                        planned: PlannedMM | None, eager: bool = False) -> dict[int, dict[str, float]]:
    """Whole-model latency (ms) per batch size of each distinct variant, the variants timed interleaved
    (timing.interleaved) on one copy of the 2:4-masked model whose kernels are switched before each
    turn: CUDA graph replay (compiled or not), or with `eager` the modules called as they are, where
    host work per op counts. `planned`: the plan cache's 2:4 call, or None for torch's.

    Graphed, each of a batch size's variants (five at most) is compiled and captured once, one after
    another, and they all replay in turns: capturing again every round would cost a compile per
    variant and round, while five graphs of one batch size fit in GPU memory side by side, and their
    compiles stay under torch.compile's recompile limit (8). All are released, and the compiled code
    reset, before the next batch size."""
    model = swap_linears(copy.deepcopy(masked_model),
                         lambda name: dataclasses.replace(plan.linear_config(name, planned=planned), kernels={},
                                                          keep_all=True),
                         named(variants[DENSE_MASKED]))
    replace_gelu_activations(model, plan.gelu_fusions(), Int8PassthroughGelu)
    vocab, device = masked_model.config.vocab_size, next(model.parameters()).device
    calls = math.ceil(MODEL_TIMING_REPEATS / ROUNDS)
    result = {}
    how = "eager" if eager else "graphed"
    for batch in tqdm(sorted(plan.batch_sizes), desc=f"timing whole-model variants ({how})", unit="batch size"):
        input_ids = random_ids(batch, plan.seq_length, vocab, device)
        names = distinct_variants(batch, variants)

        def use(variant: str) -> None:
            for name, kernel in at_batch(variants[variant], batch).items():
                model.get_submodule(name).set_kernels({input_ids.numel(): kernel})

        def captured(variant: str) -> CudaGraphRunner:
            use(variant)
            runner = CudaGraphRunner(model, capture_context=capture_context, compile=plan.compiled)
            runner(input_ids=input_ids)  # compiled and captured now, with this variant's kernels
            return runner

        runners = {} if eager else {variant: captured(variant) for variant in names}
        forwards = {variant: functools.partial(runners.get(variant, model), input_ids=input_ids) for variant in names}
        with torch.inference_mode():
            timings = interleaved(forwards, device, MODEL_TIMING_WARMUP, ROUNDS, calls, before_turn=use)
        del forwards, runners
        if not eager:
            torch.compiler.reset()
            torch.cuda.empty_cache()
        result[batch] = {variant: timings.median_ms(variant) for variant in names}
        for variant in names:
            interval = ratio_interval(timings, variant, DENSE_MASKED)
            against = "" if variant == DENSE_MASKED else (
                f", x{interval.median:.3f} [{interval.low:.3f}, {interval.high:.3f}] vs {DENSE_MASKED}"
                + ("" if interval.trusted else f" (interval wider than ±{TRUSTED_HALF_WIDTH:.0%})"))
            tqdm.write(f"whole model bs{batch} {variant} ({how}): {result[batch][variant]:.3f} ms{against}")
    return result


def fp16_plan(plan: Plan) -> Plan:
    """An int8 plan's fp16 counterpart, for the benchmark's fp16 2:4 model beside it: each layer that
    was timed gets, at each batch size, the fp16 2:4 kernel its fp16 timings earned (choose_kernel in
    the plan's mode), and no int8 calibration. Graphed kernels only (the benchmark times it compiled),
    and chosen per layer: no fp16 whole-model variant was timed against the others."""
    timings = plan.shape_timings.get("fp16", {})

    def fp16_kernels(layer: LayerPlan) -> BatchKernels:
        per_batch = timings.get(shape_name(layer.shape)) if layer.reason is None else None
        if per_batch is None:
            return dict.fromkeys(layer.kernels)
        return {batch: choose_kernel({"fp16": per_batch[batch]}, plan.mode, MIN_LAYER_SPEEDUP)
                for batch in layer.kernels}

    layers = {name: LayerPlan(layer.shape, "fp16", fp16_kernels(layer), reason=layer.reason)
              for name, layer in plan.layers.items()}
    return dataclasses.replace(plan, precision="fp16", layers=layers)


def logits_error(reference, output) -> float:
    return max(relative_error(reference.start_logits, output.start_logits),
               relative_error(reference.end_logits, output.end_logits))


def _eager_errors(dense: torch.nn.Module, accelerated: torch.nn.Module, plan: Plan, eager: bool,
                  suffix: str) -> dict[str, float]:
    """Relative logits error, model called eagerly at seq_length - 1 (an odd token count: the padding
    path), at each batch size where `accelerated` runs 2:4 (its eager kernels, with `eager`)."""
    seq, vocab = plan.seq_length, dense.config.vocab_size
    device = next(dense.parameters()).device
    errors = {}
    for batch in sparse_batches(plan, eager):
        input_ids = random_ids(batch, seq - 1, vocab, device, seed=batch)
        errors[f"bs{batch}_seq{seq - 1}_{suffix}"] = logits_error(dense(input_ids=input_ids),
                                                                 accelerated(input_ids=input_ids))
    return errors


def sparse_batches(plan: Plan, eager: bool = False) -> list[int]:
    """The batch sizes where some layer runs 2:4 (in the eager kernels, with `eager`)."""
    return sorted({batch for name in plan.sparse_layers(eager)
                   for batch, kernel in plan.layers[name].kernels_for(eager).items() if kernel is not None})


@torch.inference_mode()
def check_outputs(dense: torch.nn.Module, accelerated: CudaGraphRunner, plan: Plan) -> dict[str, float]:
    """Relative error of the accelerated logits vs the masked dense model, per batch size that runs 2:4.

    Each such batch size runs eagerly at seq_length - 1 (an odd token count: the padding path), and
    the smallest one also as its captured CUDA graph, against the dense model run the same way:
    compiled models round differently from eager ones (fused ops keep float32 in between), by more
    than the bound on an H200 (2.6e-3 for fp16 bert-base), and that is not the 2:4 kernels' error.
    """
    errors = _eager_errors(dense, accelerated.model, plan, eager=False, suffix="eager")
    batches = sparse_batches(plan)
    if batches:
        batch = batches[0]
        input_ids = random_ids(batch, plan.seq_length, dense.config.vocab_size, next(dense.parameters()).device, seed=1)
        reference = CudaGraphRunner(dense, capture_context=capture_context, compile=plan.compiled)
        errors[f"bs{batch}_seq{plan.seq_length}_graphed"] = logits_error(reference(input_ids=input_ids),
                                                                         accelerated(input_ids=input_ids))
        del reference
    return errors


@torch.inference_mode()
def check_eager_outputs(dense: torch.nn.Module, eager_model: torch.nn.Module, plan: Plan) -> dict[str, float]:
    """check_outputs' eager part for the model with the plan's eager kernels (load_accelerated(eager=True))."""
    return _eager_errors(dense, eager_model, plan, eager=True, suffix="eager_kernels")
