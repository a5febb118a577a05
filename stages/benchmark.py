"""benchmark: dense vs accelerated forward latency per batch size: eager, compiled and (GPU) graphed.

Dense is the unpruned model, as a user has it. Each mode's variants are timed with engine/timing.py:
interleaved in rounds on the same inputs (CUDA events on a GPU, a host clock on a CPU); a latency is
the median of all a variant's timed calls, beside it its throughput (samples/s), and the speedup
(dense / accelerated) is the median of the rounds' ratios with a bootstrap confidence interval over
the rounds. Modes: eager (module calls; the accelerated model with the kernels its plan timed fastest
eagerly, load_accelerated(eager=True)), compiled (torch.compile; on a GPU the compiled model captured
as one CUDA graph per batch size, which ran faster on the GPUs measured than mode="reduce-overhead")
and, on a GPU, graphed (the eager modules captured the same way). An out-of-memory at one batch size
is recorded and the others still run. On a GPU it also runs the tutorial's single-Linear microbenchmark.

The 2x2 matrix {fp16, 8-bit} x {dense, 2:4}, on a GPU with 2:4 kernels and compile on, all compiled:
fp16 dense, the faster per batch size of the unpruned model and dense_gelu (the same with cuBLASLt's
GELU epilogue on the Linear before each GELU, engine/gelu_epilogue.py: the fusion the int8 2:4 layers'
int8_gelu has; checked against the model on the calibration input); 8-bit dense, the faster per batch
size of dense_int8 (engine/int8_dense.py: int8 on the dense tensor cores, calibrated as the int8 2:4
layers are) and, where fp8 tensor cores are (compute capability 8.9+), dense_fp8 (engine/kernels.py's
Fp8Linear, fast accumulation) and dense_fp8_epilogue (the same with cuBLASLt's epilogue applying GELU
and the cast to fp8 in the FFN-in matmul, engine/fp8_epilogue.py: the fusion int8_gelu has; checked as
dense_gelu is); fp16 2:4, the accelerated model of an fp16 plan or the fp16 counterpart
of an int8 one (planner.fp16_plan), or the same with cuSPARSELt's GELU epilogue where it runs fp16 2:4
(the faster, as for dense); 8-bit 2:4, the accelerated model of an int8 plan. `factors` says, per batch
size, what each factor buys, and 2:4 and 8-bit together against fp16 dense, each a ratio of two cells
timed in the same rounds with its interval; `matrix_absent` says which cells (or 8-bit kinds) were not
measured and why, and `matrix_gelu` where each cell applies GELU (the fusions the factors compare).

Two checks mark what is not a result. A timing whose repeats spread more than NOISE_LIMIT
(interquartile range / median), or that has a single timed call, is listed under
`noise.untrustworthy`; a speedup or factor whose interval reaches further than ±3% from its median
(timing.TRUSTED_HALF_WIDTH), or that has fewer than timing.MIN_ROUNDS rounds (an eager time budget
cut them), under `noise.untrusted_figures`. `trustworthy` is false where either lists anything, and
a warning is printed; the summary stage quotes no speedup either lists.

With benchmark.num_processes above 1 the batch sizes are dealt out round-robin to that many
processes under torchrun (stages/distributed.py), rank i on GPU i; each writes its share's report,
and the stage merges them into the one report a single process writes, plus `processes` and, per
batch size, the `device_index` that measured it.
"""
from __future__ import annotations

import copy
import functools
import logging
import math
import os
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from engine.adapters import encoder_linears
from engine.attention import capture_context, use_fused_attention
from engine.calibration import calibrate_int8, fp8_input_scales, int8_layers
from engine.common import best_device, relative_error
from engine.errors import typed_first_line
from engine.fp8_epilogue import fp8_epilogue_model
from engine.gelu_epilogue import AppliedGelu, SparseGeluEpilogueLinear, epilogue_error, gelu_epilogue_model
from engine.graphs import CudaGraphRunner
from engine.int8_dense import Int8DenseConfig
from engine.kernels import (
    Fp8Config,
    Int8ReferenceLinear,
    Kernel,
    SparseLinear,
    device_backend,
    fp8_available,
    named,
    swap_linears,
)
from engine.models import check_sequence_length
from engine.plan import PLAN_FILE, Plan, inference_model, load_accelerated
from engine.planner import fp16_plan
from engine.timing import (
    MIN_ROUNDS,
    TRUSTED_HALF_WIDTH,
    Rounds,
    benchmark_rounds,
    clock_ranges,
    interleaved,
    median_ms,
    ratio_interval,
    round_ratios,
)
from engine.tuning import best_alg, random_ids, tune_linears

from .common import device_facts, read_json, write_json
from .distributed import processes_asked, run_in_processes

# The tutorial's microbenchmark: nn.Linear(10240, 3072) on a (3072, 10240) input, 2:4-masked.
TUTORIAL_IN, TUTORIAL_OUT, TUTORIAL_TOKENS = 10240, 3072, 3072
# Eager fp16 2:4 forwards without the plan cache plan every cuSPARSELt call on the host: eager
# warm-up and timing each stop after this long, with one call of each variant at least.
EAGER_BUDGET_S = 10.0
# Repeats of one timing spread wider than this (interquartile range / median) were disturbed, most
# often by other work on the machine: on a loaded CPU two identical models can differ many times over.
NOISE_LIMIT = 0.2
# The 2x2 matrix's cells, and each factor as (baseline cell, cell): what the second buys over the first.
CELLS = ("fp16 dense", "8-bit dense", "fp16 2:4", "8-bit 2:4")
FACTORS = {"2:4 at fp16": ("fp16 dense", "fp16 2:4"), "2:4 at 8-bit": ("8-bit dense", "8-bit 2:4"),
           "8-bit at dense": ("fp16 dense", "8-bit dense"), "8-bit at 2:4": ("fp16 2:4", "8-bit 2:4"),
           "2:4 and 8-bit": ("fp16 dense", "8-bit 2:4")}
FP16_DENSE = ("dense", "dense_gelu")  # the fp16 dense cell is the faster of these
EIGHT_BIT_DENSE = ("dense_int8", "dense_fp8", "dense_fp8_epilogue")  # the 8-bit dense cell is the faster of these
# Where each cell applies the GELU after the FFN-in Linear: the fusions the factors compare.
MATRIX_GELU = {"fp16 dense": "in cuBLASLt's matmul epilogue (dense_gelu), where that timed faster",
               "8-bit dense": ("in cuBLASLt's fp8 epilogue, with the cast to fp8 for the next Linear "
                               "(dense_fp8_epilogue), where that timed faster; else a kernel of its own: "
                               "torch._int_mm and torch._scaled_mm take no epilogue"),
               "fp16 2:4": "in cuSPARSELt's epilogue (the _gelu variant, plan cache on), where that timed faster",
               "8-bit 2:4": ("with the next layer's quantization in cuSPARSELt's epilogue, "
                             "where the plan runs int8_gelu")}
# GELU's tanh form in an epilogue against the model's erf GELU: far below this on bert-base in fp16, and
# on a tiny model in fp8; GELU left out is above it there.
GELU_EPILOGUE_MAX_ERROR = 1e-2
MATRIX_MODE = "compiled"
# The report's tables keyed by batch size ("bs16"): each process's share of them, merged in batch order.
PER_BATCH_SIZE = ("latency_ms", "samples_per_s", "speedup", "speedup_interval", "speedup_range", "matrix",
                  "factors", "gpu_clocks", "peak_memory_mb")


def modes(on_gpu: bool, compile_enabled: bool) -> list[str]:
    return ["eager"] + (["compiled"] if compile_enabled else []) + (["graphed"] if on_gpu else [])


def fp8_model(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of `model` with its encoder Linears in fp8, input scales from one forward of `inputs`."""
    model = copy.deepcopy(model)
    scales = fp8_input_scales(model, encoder_linears(model), inputs)
    return swap_linears(model, lambda name: Fp8Config(scales[name]), named(scales))


def int8_dense_model(model: torch.nn.Module, inputs: dict[str, torch.Tensor], strength: float) -> torch.nn.Module:
    """A copy of `model` with its encoder Linears int8 on the dense tensor cores (Int8DenseLinear),
    calibrated as the int8 2:4 layers are: SmoothQuant at `strength` from one forward of `inputs`, and
    a Linear whose int8 error there is over calibration.MAX_LAYER_ERROR left as it is."""
    model = copy.deepcopy(model)
    calibrated = calibrate_int8(model, encoder_linears(model), inputs, strength)
    allowed = int8_layers({name: error for name, (_, _, error) in calibrated.items()})
    return swap_linears(model, lambda name: Int8DenseConfig(*calibrated[name][:2]),
                        named(name for name, ok in allowed.items() if ok))


def matrix_unavailable(on_gpu: bool, plan: Plan, mode_names: list[str]) -> str | None:
    """Why the 2x2 matrix is not measured here, or None where it is."""
    if not on_gpu:
        return "a CPU run: float32, no 8-bit or 2:4 kernels"
    if plan.backend is None:
        return f"the plan runs no 2:4 kernels ({plan.reason})"
    if MATRIX_MODE not in mode_names:
        return f"the matrix is timed {MATRIX_MODE}, and that mode is off (benchmark.compile, or the modes asked for)"
    return None


def matrix_models(dense: torch.nn.Module, plan: Plan, accelerated_dir: Path, device: torch.device,
                  dtype: torch.dtype, calibration: dict[str, torch.Tensor],
                  params) -> tuple[dict[str, torch.nn.Module], dict[str, tuple[str, ...]], dict[str, str]]:
    """(the models the matrix adds to dense and accelerated, timed compiled only; the variants each
    2:4 cell is the faster of; what is absent, cell or variant, and why)."""
    models = {"dense_int8": int8_dense_model(dense, calibration, params["accelerate.int8_smoothing"])}
    absent = {}
    if fp8_available(device):
        models["dense_fp8"] = fp8_model(dense, calibration)
        add_epilogue_variant("dense_fp8_epilogue", models["dense_fp8"], fp8_epilogue_model, calibration, models,
                             absent)
    else:
        absent["dense_fp8"] = "no fp8 tensor cores (compute capability below 8.9)"
    add_gelu_epilogue("dense", dense, calibration, models, absent)
    if plan.precision == "int8":
        fp16 = models["accelerated_fp16"] = load_accelerated(accelerated_dir, device, dtype, graphs=False,
                                                             plan=fp16_plan(plan))
        add_gelu_epilogue("accelerated_fp16", fp16, calibration, models, absent)
        two_four = {"fp16 2:4": ("accelerated_fp16", "accelerated_fp16_gelu"), "8-bit 2:4": ("accelerated",)}
        return models, two_four, absent
    fp16 = load_accelerated(accelerated_dir, device, dtype, graphs=False, plan=plan)
    add_gelu_epilogue("accelerated", fp16, calibration, models, absent)
    absent["8-bit 2:4"] = "accelerate.precision is fp16: no int8 2:4 model (with int8, both 2:4 cells are measured)"
    return models, {"fp16 2:4": ("accelerated", "accelerated_gelu")}, absent


def add_gelu_epilogue(name: str, model: torch.nn.Module, calibration: dict[str, torch.Tensor],
                      models: dict[str, torch.nn.Module], absent: dict[str, str]) -> None:
    """models[name_gelu]: `model` with the GELU epilogue (engine/gelu_epilogue.py), as add_epilogue_variant."""
    add_epilogue_variant(f"{name}_gelu", model, gelu_epilogue_model, calibration, models, absent)


def add_epilogue_variant(variant: str, model: torch.nn.Module, with_epilogue, calibration: dict[str, torch.Tensor],
                         models: dict[str, torch.nn.Module], absent: dict[str, str]) -> None:
    """models[variant]: with_epilogue(model), a copy whose Linears before a GELU apply it in their
    epilogue, where some Linear takes it, the logits on the calibration input stay within
    GELU_EPILOGUE_MAX_ERROR of `model`'s and so does each 2:4 epilogue at every bucket (epilogue_error);
    else absent[variant] says why (a library refusing the epilogue among the reasons)."""
    try:
        candidate = with_epilogue(model)
        if not any(isinstance(module, AppliedGelu) for module in candidate.modules()):
            absent[variant] = ("no Linear before a GELU can take the epilogue (an int8 kernel there, the plan cache "
                               "off, or not fp8 on both sides)")
            return
        with torch.inference_mode():
            error = relative_error(model(**calibration).start_logits, candidate(**calibration).start_logits)
            # the 2:4 epilogue at every token bucket the timing will run, which the input above may not reach
            error = max([error, *(epilogue_error(module) for module in candidate.modules()
                                  if isinstance(module, SparseGeluEpilogueLinear))])
    except RuntimeError as err:  # a library refusing the epilogue (cuSPARSELt's or cuBLASLt's status)
        absent[variant] = typed_first_line(err)
        return
    if error > GELU_EPILOGUE_MAX_ERROR:
        absent[variant] = (f"its outputs differ by {error:.2e} > {GELU_EPILOGUE_MAX_ERROR} (the logits against the model without "
                           "the epilogue, or a 2:4 epilogue against GELU after the same call)")
    else:
        models[variant] = candidate


def wrap(model: torch.nn.Module, mode: str, on_gpu: bool):
    """The callable a mode times. Compiled shapes stay static: one graph per batch size."""
    if mode == "compiled" and on_gpu:
        return CudaGraphRunner(model, capture_context=capture_context, compile=True)
    if mode == "compiled":
        return torch.compile(model, dynamic=False)
    if mode == "graphed":
        return CudaGraphRunner(model, capture_context=capture_context)
    return model


def relative_spread(times_ms: list[float]) -> float | None:
    """Interquartile range / median of a timing's repeats; None for a single call."""
    if len(times_ms) < 2:
        return None
    first, _, third = statistics.quantiles(times_ms, n=4, method="inclusive")
    return round((third - first) / statistics.median(times_ms), 4)


def untrustworthy(spread: dict[str, dict[str, float | None]]) -> dict[str, dict[str, str]]:
    """Per batch size, the timings too noisy to trust, each with the reason."""
    found = {}
    for batch, by_timing in spread.items():
        reasons = {timing: "a single timed call: no spread to check" if value is None
                   else f"repeats spread {value:.0%} (IQR / median) > {NOISE_LIMIT:.0%}"
                   for timing, value in by_timing.items() if value is None or value > NOISE_LIMIT}
        if reasons:
            found[batch] = reasons
    return found


def figures(speedup_interval: dict[str, dict], factors: dict[str, dict]) -> dict[str, dict[str, dict | None]]:
    """Per batch size, every figure with an interval: "speedup <mode>" and each factor of the matrix."""
    return {batch: {**{f"speedup {mode}": interval for mode, interval in speedup_interval.get(batch, {}).items()},
                    **factors.get(batch, {})}
            for batch in {**speedup_interval, **factors}}


def untrusted_why(interval: dict) -> str:
    """Why a figure's interval (timing.RatioInterval.report) makes it no result."""
    if interval["rounds"] < MIN_ROUNDS:
        return f"{interval['rounds']} rounds < {MIN_ROUNDS}"
    return f"its interval reaches past ±{TRUSTED_HALF_WIDTH:.0%} of its median"


def interval_text(interval: dict | None) -> str:
    """A figure with its interval as text, "x1.080 [1.070, 1.090]", marked where it is no result."""
    if interval is None:
        return "n/a"
    text = f"x{interval['median']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"
    return text if interval["trusted"] else f"{text} (not a result: {untrusted_why(interval)})"


def untrusted_figures(by_batch: dict[str, dict[str, dict | None]]) -> dict[str, dict[str, str]]:
    """Per batch size, the figures whose interval is not trusted (timing.ratio_interval), each as
    interval_text, which says why."""
    found = {}
    for batch, by_figure in by_batch.items():
        reasons = {figure: interval_text(interval) for figure, interval in by_figure.items()
                   if interval is not None and not interval["trusted"]}
        if reasons:
            found[batch] = reasons
    return found


def noise_check(spread: dict[str, dict[str, float | None]], intervals: dict[str, dict[str, dict | None]]) -> dict:
    """The report's noise section and trust flag for these spreads and figures' intervals; a warning
    names what fails."""
    noisy_reasons, unsure = untrustworthy(spread), untrusted_figures(intervals)
    log = logging.getLogger(__name__)
    if noisy_reasons:
        noisy = [f"{batch} {timing}" for batch, reasons in noisy_reasons.items() for timing in reasons]
        log.warning(f"benchmark: warning: {len(noisy)} timings too noisy to trust ({', '.join(noisy)}); "
                    "see noise.untrustworthy in reports/benchmark.json")
    if unsure:
        named_figures = [f"{batch} {figure}" for batch, reasons in unsure.items() for figure in reasons]
        log.warning(f"benchmark: warning: {len(named_figures)} figures are not results, their intervals wider "
                    f"than ±{TRUSTED_HALF_WIDTH:.0%} or their rounds too few ({', '.join(named_figures)}); "
                    "see noise.untrusted_figures in reports/benchmark.json")
    return {"noise": {"limit": NOISE_LIMIT, "spread": spread, "untrustworthy": noisy_reasons,
                      "interval_limit": TRUSTED_HALF_WIDTH, "untrusted_figures": unsure},
            "trustworthy": not noisy_reasons and not unsure}


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def gpu_driver_version() -> str | None:
    """The NVIDIA driver version (torch reports only the CUDA runtime's)."""
    try:  # "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build ..."
        found = re.search(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)*)\s", Path("/proc/driver/nvidia/version").read_text())
        if found:
            return found.group(1)
    except OSError:
        pass
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else None


def measure_batch(models: dict, input_ids: torch.Tensor, mode_names: list[str], params,
                  device) -> dict[str, Rounds]:
    """Per mode, its variants timed interleaved on `input_ids` (timing.interleaved): each warmed up
    (graphs captured, code compiled), then timing.benchmark_rounds rounds of a turn each,
    benchmark.repeats calls of each spread over the rounds (one a turn at least); eager within
    EAGER_BUDGET_S. Raises OutOfMemoryError."""
    rounds = benchmark_rounds(device)
    calls = max(1, math.ceil(params["benchmark.repeats"] / rounds))
    timings = {}
    for mode in mode_names:
        forwards = {variant: functools.partial(by_mode[mode], input_ids=input_ids)
                    for variant, by_mode in models.items() if mode in by_mode}
        with torch.inference_mode():
            timings[mode] = interleaved(forwards, device, params["benchmark.warmup"], rounds, calls,
                                        budget_s=EAGER_BUDGET_S if mode == "eager" else None)
    return timings


def matrix_cells(timings: Rounds, two_four: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Each cell of the matrix these rounds measured -> its variant, the faster (median) of the cell's
    timed variants: FP16_DENSE, EIGHT_BIT_DENSE, and the 2:4 cells' as `two_four` names them."""
    timed = timings.times_ms
    cells = {}
    for cell, variants in {"fp16 dense": FP16_DENSE, "8-bit dense": EIGHT_BIT_DENSE, **two_four}.items():
        if measured := [variant for variant in variants if variant in timed]:
            cells[cell] = min(measured, key=timings.median_ms)
    return cells


def factor_table(timings: Rounds, cells: dict[str, str]) -> dict[str, dict | None]:
    """What each factor buys (FACTORS): the rounds' median ratio of its two cells with its interval
    (timing.RatioInterval.report), None where a cell is missing."""
    return {factor: ratio_interval(timings, cells[faster], cells[baseline]).report()
            if {baseline, faster} <= cells.keys() else None
            for factor, (baseline, faster) in FACTORS.items()}


def batch_tables(timings: dict[str, Rounds], batch: int, two_four: dict[str, tuple[str, ...]]) -> dict[str, dict]:
    """One batch size's row of each per-batch-size table (PER_BATCH_SIZE, less those left empty) and
    its spreads, from measure_batch's timings."""
    tables = {name: {} for name in PER_BATCH_SIZE + ("spread",)}
    for mode, rounds in timings.items():
        for variant in rounds.times_ms:
            timing = f"{variant}_{mode}"
            ms = rounds.median_ms(variant)
            tables["latency_ms"][timing] = round(ms, 3)
            tables["samples_per_s"][timing] = round(batch * 1000 / ms, 1)
            tables["spread"][timing] = relative_spread(rounds.calls(variant))
            if variant in rounds.peak_memory_mb:
                tables["peak_memory_mb"][timing] = rounds.peak_memory_mb[variant]
        if {"dense", "accelerated"} <= rounds.times_ms.keys():
            interval = ratio_interval(rounds, "accelerated", "dense").report()
            ratios = round_ratios(rounds, "accelerated", "dense")
            tables["speedup"][mode] = interval["median"]
            tables["speedup_interval"][mode] = interval
            tables["speedup_range"][mode] = [round(min(ratios), 3), round(max(ratios), 3)]
        if clocks := clock_ranges(rounds.clocks):
            tables["gpu_clocks"][mode] = clocks
        if mode == MATRIX_MODE and two_four:
            cells = matrix_cells(rounds, two_four)
            tables["matrix"] = {cell: {"variant": variant, "ms": tables["latency_ms"][f"{variant}_{mode}"],
                                       "samples_per_s": tables["samples_per_s"][f"{variant}_{mode}"]}
                                for cell, variant in cells.items()}
            tables["factors"] = factor_table(rounds, cells)
    return {name: row for name, row in tables.items() if row}


@torch.no_grad()
def tutorial_linear(device: torch.device, dtype: torch.dtype, params) -> dict:
    """The tutorial's Linear, dense (cuBLAS) vs 2:4 (cuSPARSELt, tuned config), GPU time and eager."""
    from torch.sparse import to_sparse_semi_structured

    torch.manual_seed(0)
    linear = torch.nn.Linear(TUTORIAL_IN, TUTORIAL_OUT).to(device, dtype).eval()
    linear.weight.mul_(torch.tensor([0, 0, 1, 1], dtype=dtype, device=device).tile(TUTORIAL_OUT, TUTORIAL_IN // 4))
    x = torch.rand(TUTORIAL_TOKENS, TUTORIAL_IN, device=device, dtype=dtype)
    results, notes = tune_linears([(TUTORIAL_OUT, TUTORIAL_IN, TUTORIAL_TOKENS)], dtype,
                                  max_alg_id=params["accelerate.max_alg_id"])
    timing = results[(TUTORIAL_OUT, TUTORIAL_IN, TUTORIAL_TOKENS)]
    alg_id = best_alg(timing)
    shape = f"x {TUTORIAL_TOKENS}x{TUTORIAL_IN} @ W {TUTORIAL_OUT}x{TUTORIAL_IN} ({str(dtype).removeprefix('torch.')})"
    if alg_id is None:
        return {"shape": shape, "error": "no cuSPARSELt kernel config ran", "kernel_timing_notes": notes}
    sparse = SparseLinear(linear, {TUTORIAL_TOKENS: Kernel("fp16", alg_id)})
    subclass = torch.nn.Linear(TUTORIAL_IN, TUTORIAL_OUT).to(device, dtype).eval()
    subclass.bias.copy_(linear.bias)
    subclass.weight = torch.nn.Parameter(to_sparse_semi_structured(linear.weight.detach()), requires_grad=False)
    warmup, repeats = params["benchmark.warmup"], params["benchmark.repeats"]
    return {
        "shape": shape,
        "dense_ms": round(timing["dense_ms"], 4),
        "sparse_ms": round(timing["sparse_ms"][alg_id], 4),
        "speedup": round(timing["dense_ms"] / timing["sparse_ms"][alg_id], 3),
        "alg_id": alg_id,
        "sparse_ms_by_alg_id": {str(a): round(ms, 4) for a, ms in timing["sparse_ms"].items()},
        "search": timing["search"],
        "kernel_timing_notes": notes,
        "timing": "GPU time per call, CUDA-graph replay (no host overhead), random 2:4 weights",
        "eager_dense_ms": round(median_ms(lambda: linear(x), warmup, repeats, device), 4),
        "eager_sparse_ms": round(median_ms(lambda: sparse(x), warmup, repeats, device), 4),
        "eager_torch_subclass_ms": round(median_ms(lambda: subclass(x), warmup, repeats, device), 4),
        "relative_error": round(relative_error(linear(x), sparse(x)), 6),
    }


def device_batch_sizes(params, on_gpu: bool) -> list[int]:
    return params["benchmark.batch_sizes" if on_gpu else "benchmark.cpu_batch_sizes"]


def run(params, dense_dir: Path, accelerated_dir: Path, only_modes: list[str] | None = None,
        tutorial: bool = True, batch_sizes: list[int] | None = None) -> tuple[dict, list[dict]]:
    """The benchmark; only_modes keeps those of the modes that apply (benchmarks/gpu_engine.py times
    only "compiled" when GPU time is short), tutorial False skips the tutorial's Linear, batch_sizes
    replaces the device's batch sizes of params."""
    device = best_device()
    on_gpu = device.type == "cuda"
    dtype = getattr(torch, params["accelerate.dtype"]) if on_gpu else torch.float32
    batch_sizes = device_batch_sizes(params, on_gpu) if batch_sizes is None else batch_sizes
    length_field = "benchmark.seq_length" if on_gpu else "benchmark.cpu_seq_length"
    seq_length = params[length_field]
    mode_names = [mode for mode in modes(on_gpu, params["benchmark.compile"]) if only_modes is None or mode in only_modes]
    # Dense gets the accelerated model's one query/key/value Linear too: the speedup is 2:4's alone.
    dense = inference_model(dense_dir, device, dtype)
    check_sequence_length(dense.config, seq_length, f"params.yaml: {length_field}")
    plan = Plan.load(accelerated_dir / PLAN_FILE)
    plain = {
        "dense": use_fused_attention(dense) if on_gpu else dense,
        "accelerated": load_accelerated(accelerated_dir, device, dtype, graphs=False, plan=plan),
    }
    modes_of = {variant: mode_names for variant in plain}
    # Run eagerly, the accelerated model is the one with the kernels the plan timed fastest eagerly.
    eager_models = {"accelerated": load_accelerated(accelerated_dir, device, dtype, eager=True, plan=plan)} \
        if on_gpu and "eager" in mode_names else {}
    unavailable = matrix_unavailable(on_gpu, plan, mode_names)
    two_four, matrix_absent = {}, dict.fromkeys(CELLS, unavailable)
    if unavailable is None:
        calibration = {"input_ids": random_ids(4, seq_length, dense.config.vocab_size, device)}
        added, two_four, matrix_absent = matrix_models(plain["dense"], plan, accelerated_dir, device, dtype,
                                                       calibration, params)
        plain |= added
        modes_of |= dict.fromkeys(added, [MATRIX_MODE])
    tables, spread, rows = {name: {} for name in PER_BATCH_SIZE}, {}, []
    for batch in tqdm(batch_sizes, desc="benchmark", unit="batch size"):
        key = f"bs{batch}"
        # Fresh wrappers per batch size: graphs and compiled code of the last size are freed first.
        models = {variant: {mode: wrap(eager_models.get(variant, model) if mode == "eager" else model, mode, on_gpu)
                            for mode in modes_of[variant]}
                  for variant, model in plain.items()}
        try:
            input_ids = random_ids(batch, seq_length, dense.config.vocab_size, device, seed=batch)
            timings = measure_batch(models, input_ids, mode_names, params, device)
        except RuntimeError as err:  # torch.OutOfMemoryError, or one torch.compile wrapped
            if not is_out_of_memory(err):
                raise
            tables["latency_ms"][key], tables["speedup"][key] = {"error": "out of memory"}, {}
            continue
        finally:
            del models
            if on_gpu:
                torch.compiler.reset()
                torch.cuda.empty_cache()
        measured = batch_tables(timings, batch, two_four)
        spread[key] = measured.pop("spread")
        for name, row in measured.items():
            tables[name][key] = row
        rows += [{"batch_size": batch, "variant": variant, "mode": mode, "latency_ms": ms,
                  "samples_per_s": measured["samples_per_s"][variant_mode]}
                 for variant_mode, ms in measured["latency_ms"].items()
                 for variant, mode in [variant_mode.rsplit("_", 1)]]
    metrics = {
        "seq_length": seq_length,
        "dtype": str(dtype).removeprefix("torch."),
        "modes": mode_names,
        "warmup": params["benchmark.warmup"],
        "repeats": params["benchmark.repeats"],
        "rounds": benchmark_rounds(device),
        **tables,
        "matrix_absent": matrix_absent,
        "matrix_gelu": MATRIX_GELU if two_four else {},
        **noise_check(spread, figures(tables["speedup_interval"], tables["factors"])),
        "device": device_facts(device),
    }
    if any(isinstance(module, Int8ReferenceLinear) for module in plain["accelerated"].modules()):
        metrics["note"] = "accelerated computes its int8 layers in a float64 emulation here: not a speed figure"
    if on_gpu:
        metrics["device"]["driver"] = gpu_driver_version()
        if tutorial and device_backend(device)[0] is not None:
            metrics["tutorial_linear"] = tutorial_linear(device, dtype, params)
    return metrics, rows


def benchmark(params, dense_dir: Path, accelerated_dir: Path) -> dict:
    """The stage's report: `run` in this process, or with benchmark.num_processes above 1 (never more
    than there are batch sizes) the batch sizes dealt out to that many processes and merged."""
    batch_sizes = device_batch_sizes(params, torch.cuda.is_available())
    processes = min(processes_asked(params, "benchmark"), len(batch_sizes))
    if processes == 1:
        metrics, _ = run(params, dense_dir, accelerated_dir)
        return {**metrics, "processes": 1}
    # Processes, not threads: cuSPARSELt handles are per process (not thread-safe), and each GPU must
    # be timed with no other process's kernels on it. Round-robin spreads the big batches.
    shares = [batch_sizes[rank::processes] for rank in range(processes)]
    with tempfile.TemporaryDirectory(prefix="twofour-benchmark-") as parts:
        run_in_processes(measure_share, processes, params, dense_dir, accelerated_dir, shares, Path(parts),
                         cusparselt_first=True)
        return merged([read_json(Path(parts) / f"rank{rank}.json") for rank in range(processes)], batch_sizes)


def measure_share(params, dense_dir: Path, accelerated_dir: Path, shares: list[list[int]], parts: Path) -> None:
    """A launched rank: its share of the batch sizes on its own GPU, the report written to
    parts/rank<N>.json (atomically); rank 0 also times the tutorial's Linear."""
    rank = int(os.environ["RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # before any CUDA work
    metrics, _ = run(params, dense_dir, accelerated_dir, tutorial=rank == 0, batch_sizes=shares[rank])
    write_json(parts / f"rank{rank}.json", metrics)


def merged(partials: list[dict], batch_sizes: list[int]) -> dict:
    """The report one process would have written, from each rank's report of its share: rank 0's
    facts, every per-batch-size table in batch order, the noise check over all timings and figures; plus how many
    processes ran and, per batch size, the rank that measured it, which is its GPU's index."""
    order = [f"bs{batch}" for batch in batch_sizes]

    def in_batch_order(tables) -> dict:
        rows = {key: row for table in tables for key, row in table.items()}
        return {key: rows[key] for key in order if key in rows}

    metrics = dict(partials[0])
    for table in PER_BATCH_SIZE:
        metrics[table] = in_batch_order(partial[table] for partial in partials)
    metrics.update(noise_check(in_batch_order(partial["noise"]["spread"] for partial in partials),
                               figures(metrics["speedup_interval"], metrics["factors"])))
    metrics["processes"] = len(partials)
    metrics["device_index"] = {key: rank for key in order for rank, partial in enumerate(partials)
                               if key in partial["latency_ms"]}
    return metrics


def latency_frame(metrics: dict) -> pd.DataFrame:
    """Per batch size ("bs16"), each variant_mode's latency (ms) and each mode's speedup."""
    latency = pd.DataFrame.from_dict(metrics["latency_ms"], orient="index")
    speedup = pd.DataFrame.from_dict(metrics["speedup"], orient="index").add_prefix("speedup_")
    return latency.join(speedup).rename_axis("batch_size")
