"""benchmark: dense vs accelerated forward latency per batch size: eager, compiled and (GPU) graphed.

Median of `repeats` timed forwards after `warmup` (CUDA events on a GPU, a host clock on a CPU);
speedup is dense / accelerated. Modes: eager (module calls; the accelerated model with the kernels
its plan timed fastest eagerly, load_accelerated(eager=True)), compiled (torch.compile; on a GPU the compiled model captured as one
CUDA graph per batch size, which ran faster on the GPUs measured than
mode="reduce-overhead") and, on a GPU, graphed (the eager modules captured the same way). On a
GPU with fp8 tensor cores (compute capability 8.9+) and compile on, the dense model with fp8
Linears (engine/kernels.py's Fp8Linear) is timed compiled too, as `dense_fp8`: the dense model to
beat besides fp16. An out-of-memory at one batch size is recorded and the others still run. On a GPU it also
runs the tutorial's single-Linear microbenchmark.

Each timing's repeats are checked for noise: a timing whose repeats spread more than NOISE_LIMIT
(interquartile range / median), or that has a single timed call, is listed under
`noise.untrustworthy`, `trustworthy` is then false, and a warning is printed.

With benchmark.num_processes above 1 the batch sizes are dealt out round-robin to that many
processes under torchrun (stages/distributed.py), rank i on GPU i; each writes its share's report,
and the stage merges them into the one report a single process writes, plus `processes` and, per
batch size, the `device_index` that measured it.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from engine.attention import capture_context, use_fused_attention
from engine.calibration import fp8_input_scales
from engine.common import best_device, relative_error
from engine.graphs import CudaGraphRunner
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
from engine.adapters import encoder_linears
from engine.models import check_sequence_length
from engine.plan import inference_model, load_accelerated
from engine.tuning import best_alg, median_ms, random_ids, tune_linears

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
# Interleaved rounds per mode (measure_batch): each times every variant for its share of the repeats.
ROUNDS = 5
# The report's tables keyed by batch size ("bs16"): each process's share of them, merged in batch order.
PER_BATCH_SIZE = ("latency_ms", "speedup", "speedup_range", "speedup_vs_dense_fp8", "peak_memory_mb")


def modes(on_gpu: bool, compile_enabled: bool) -> list[str]:
    return ["eager"] + (["compiled"] if compile_enabled else []) + (["graphed"] if on_gpu else [])


def fp8_model(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of `model` with its encoder Linears in fp8, input scales from one forward of `inputs`."""
    model = copy.deepcopy(model)
    scales = fp8_input_scales(model, encoder_linears(model), inputs)
    return swap_linears(model, lambda name: Fp8Config(scales[name]), named(scales))


def wrap(model: torch.nn.Module, mode: str, on_gpu: bool):
    """The callable a mode times. Compiled shapes stay static: one graph per batch size."""
    if mode == "compiled" and on_gpu:
        return CudaGraphRunner(model, capture_context=capture_context, compile=True)
    if mode == "compiled":
        return torch.compile(model, dynamic=False)
    if mode == "graphed":
        return CudaGraphRunner(model, capture_context=capture_context)
    return model


def speedups(latency: dict[str, dict]) -> dict[str, dict[str, float]]:
    """dense / accelerated per batch size and mode, where both were measured."""
    result = {}
    for batch, row in latency.items():
        modes_seen = [key.rsplit("_", 1)[1] for key in row if key.rsplit("_", 1)[0] == "dense"]
        result[batch] = {mode: round(row[f"dense_{mode}"] / row[f"accelerated_{mode}"], 3)
                         for mode in modes_seen if f"accelerated_{mode}" in row}
    return result


class CallTimer:
    """`forward`, with each call timed (CUDA events on a GPU, a host clock on a CPU): the calls are
    kept, for the medians and the noise check."""

    def __init__(self, forward, device: torch.device):
        self.forward, self.on_gpu, self.calls = forward, device.type == "cuda", []

    def __call__(self):
        if self.on_gpu:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self.forward()
            end.record()
            self.calls.append((start, end))
        else:
            begin = time.perf_counter()
            self.forward()
            self.calls.append((time.perf_counter() - begin) * 1000)

    def timed_ms(self) -> list[float]:
        if self.on_gpu:
            torch.cuda.synchronize()
            return [start.elapsed_time(end) for start, end in self.calls]
        return list(self.calls)


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


def noise_check(spread: dict[str, dict[str, float | None]]) -> dict:
    """The report's noise section and trust flag for these spreads; a warning names the noisy timings."""
    noisy_reasons = untrustworthy(spread)
    if noisy_reasons:
        noisy = [f"{batch} {timing}" for batch, reasons in noisy_reasons.items() for timing in reasons]
        logging.getLogger(__name__).warning(
            f"benchmark: warning: {len(noisy)} timings too noisy to trust ({', '.join(noisy)}); "
            "see noise.untrustworthy in reports/benchmark.json")
    return {"noise": {"limit": NOISE_LIMIT, "spread": spread, "untrustworthy": noisy_reasons},
            "trustworthy": not noisy_reasons}


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
                  device) -> tuple[dict, dict, dict, dict]:
    """(latency ms, peak memory MiB, relative spread of the repeats, per-round speedup range) per
    variant_mode at one batch of inputs; raises OutOfMemoryError.

    A mode's variants are timed interleaved: each is warmed up (graphs captured, code compiled), then
    ROUNDS rounds time every variant in turn for its share of the repeats, so a change of clocks or
    load during the measurement reaches dense and accelerated alike. The latency is the median of
    all a variant's timed calls; the range is the lowest and highest dense / accelerated ratio of
    the rounds' medians."""
    latency, peak, spread, ranges = {}, {}, {}, {}
    per_round = max(1, math.ceil(params["benchmark.repeats"] / ROUNDS))
    for mode in mode_names:
        # eager 2:4 calls may plan on the host for each call: a warm-up call and a round of each at least
        budget_s = EAGER_BUDGET_S if mode == "eager" else None

        def spent(since: float) -> bool:
            return budget_s is not None and time.perf_counter() - since > budget_s

        timers = {}
        for variant, by_mode in models.items():
            if mode not in by_mode:
                continue
            forward = by_mode[mode]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            warm_from = time.perf_counter()
            with torch.inference_mode():
                for _ in range(params["benchmark.warmup"]):
                    forward(input_ids=input_ids)
                    if spent(warm_from):
                        break
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                peak[f"{variant}_{mode}"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            timers[variant] = CallTimer(lambda forward=forward: forward(input_ids=input_ids), device)
        started = time.perf_counter()
        round_calls = {variant: [] for variant in timers}  # per round, (first, end) index into timer.calls
        for _ in range(ROUNDS):
            for variant, timer in timers.items():
                before = len(timer.calls)
                with torch.inference_mode():
                    for _ in range(per_round):
                        timer()
                        if spent(started):
                            break
                round_calls[variant].append((before, len(timer.calls)))
            if spent(started):
                break
        round_medians = {}
        for variant, timer in timers.items():
            times = timer.timed_ms()
            latency[f"{variant}_{mode}"] = round(statistics.median(times), 3)
            spread[f"{variant}_{mode}"] = relative_spread(times)
            round_medians[variant] = [statistics.median(times[begin:end]) for begin, end in round_calls[variant]]
        if "dense" in round_medians and "accelerated" in round_medians:
            ratios = [dense / accelerated
                      for dense, accelerated in zip(round_medians["dense"], round_medians["accelerated"])]
            ranges[mode] = [round(min(ratios), 3), round(max(ratios), 3)]
    return latency, peak, spread, ranges


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
    plain = {
        "dense": use_fused_attention(dense) if on_gpu else dense,
        "accelerated": load_accelerated(accelerated_dir, device, dtype, graphs=False),
    }
    modes_of = {variant: mode_names for variant in plain}
    # Run eagerly, the accelerated model is the one with the kernels the plan timed fastest eagerly.
    eager_models = {"accelerated": load_accelerated(accelerated_dir, device, dtype, eager=True)} \
        if on_gpu and "eager" in mode_names else {}
    with_fp8 = fp8_available(device) and "compiled" in mode_names
    if with_fp8:
        calibration = {"input_ids": random_ids(4, seq_length, dense.config.vocab_size, device)}
        plain["dense_fp8"] = fp8_model(plain["dense"], calibration)
        modes_of["dense_fp8"] = ["compiled"]
    latency, peak_memory, spread, speedup_range, rows = {}, {}, {}, {}, []
    for batch in tqdm(batch_sizes, desc="benchmark", unit="batch size"):
        key = f"bs{batch}"
        # Fresh wrappers per batch size: graphs and compiled code of the last size are freed first.
        models = {variant: {mode: wrap(eager_models.get(variant, model) if mode == "eager" else model, mode, on_gpu)
                            for mode in modes_of[variant]}
                  for variant, model in plain.items()}
        try:
            input_ids = random_ids(batch, seq_length, dense.config.vocab_size, device, seed=batch)
            latency[key], peak, spread[key], speedup_range[key] = measure_batch(models, input_ids, mode_names,
                                                                                params, device)
        except RuntimeError as err:  # torch.OutOfMemoryError, or one torch.compile wrapped
            if not is_out_of_memory(err):
                raise
            latency[key] = {"error": "out of memory"}
            continue
        finally:
            del models
            if on_gpu:
                torch.compiler.reset()
                torch.cuda.empty_cache()
        if peak:
            peak_memory[key] = peak
        rows += [{"batch_size": batch, "variant": variant, "mode": mode, "latency_ms": ms}
                 for variant_mode, ms in latency[key].items()
                 for variant, mode in [variant_mode.rsplit("_", 1)]]
    metrics = {
        "seq_length": seq_length,
        "dtype": str(dtype).removeprefix("torch."),
        "modes": mode_names,
        "warmup": params["benchmark.warmup"],
        "repeats": params["benchmark.repeats"],
        "latency_ms": latency,
        "speedup": speedups(latency),
        "rounds": ROUNDS,
        "speedup_range": speedup_range,
        **noise_check(spread),
        "device": device_facts(device),
    }
    if with_fp8:
        metrics["speedup_vs_dense_fp8"] = {
            batch: round(row["dense_fp8_compiled"] / row["accelerated_compiled"], 3)
            for batch, row in latency.items() if "dense_fp8_compiled" in row and "accelerated_compiled" in row}
    if any(isinstance(module, Int8ReferenceLinear) for module in plain["accelerated"].modules()):
        metrics["note"] = "accelerated computes its int8 layers in a float64 emulation here: not a speed figure"
    if on_gpu:
        metrics["peak_memory_mb"] = peak_memory
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
    facts, every per-batch-size table in batch order, the noise check over all timings; plus how many
    processes ran and, per batch size, the rank that measured it, which is its GPU's index."""
    order = [f"bs{batch}" for batch in batch_sizes]

    def in_batch_order(tables) -> dict:
        rows = {key: row for table in tables for key, row in table.items()}
        return {key: rows[key] for key in order if key in rows}

    metrics = dict(partials[0])
    for table in PER_BATCH_SIZE:
        if table in metrics:
            metrics[table] = in_batch_order(partial[table] for partial in partials)
    metrics.update(noise_check(in_batch_order(partial["noise"]["spread"] for partial in partials)))
    metrics["processes"] = len(partials)
    metrics["device_index"] = {key: rank for key in order for rank, partial in enumerate(partials)
                               if key in partial["latency_ms"]}
    return metrics


def latency_frame(metrics: dict) -> pd.DataFrame:
    """Per batch size ("bs16"), each variant_mode's latency (ms) and each mode's speedup."""
    latency = pd.DataFrame.from_dict(metrics["latency_ms"], orient="index")
    speedup = pd.DataFrame.from_dict(metrics["speedup"], orient="index").add_prefix("speedup_")
    return latency.join(speedup).rename_axis("batch_size")
