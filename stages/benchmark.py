"""benchmark: dense vs accelerated forward latency per batch size, eager and torch.compile.

Median of `repeats` timed forwards after `warmup` (CUDA events on a GPU); speedup is
dense / accelerated. An out-of-memory at one batch size is recorded and the others still run.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from .accelerate import load_accelerated
from .common import best_device, device_facts
from .modeling import load_qa_model


def median_latency_ms(forward, warmup: int, repeats: int, device: torch.device) -> float:
    for _ in range(warmup):
        forward()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            forward()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            forward()
            times.append((time.perf_counter() - begin) * 1000)
    return statistics.median(times)


def speedups(latency: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """dense / accelerated per batch size and mode, where both were measured."""
    result = {}
    for batch, row in latency.items():
        modes = {key.split("_", 1)[1] for key in row if key.startswith("dense_")}
        result[batch] = {
            mode: round(row[f"dense_{mode}"] / row[f"accelerated_{mode}"], 3)
            for mode in sorted(modes) if f"accelerated_{mode}" in row
        }
    return result


def run(params, dense_dir: Path, accelerated_dir: Path) -> tuple[dict, list[dict]]:
    device = best_device()
    on_gpu = device.type == "cuda"
    dtype = getattr(torch, params["accelerate.dtype"]) if on_gpu else torch.float32
    batch_sizes = params["benchmark.batch_sizes" if on_gpu else "benchmark.cpu_batch_sizes"]
    seq_length = params["benchmark.seq_length" if on_gpu else "benchmark.cpu_seq_length"]
    variants = {
        "dense": load_qa_model(str(dense_dir), dtype=dtype).to(device).eval(),
        "accelerated": load_accelerated(accelerated_dir, device, dtype),
    }
    modes = {"eager": lambda m: m}
    if params["benchmark.compile"]:
        modes["compiled"] = torch.compile
    vocab = variants["dense"].config.vocab_size
    latency: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    rows = []
    for mode, wrap in modes.items():
        for name, model in variants.items():
            forward_model = wrap(model)
            for batch in batch_sizes:
                key = f"bs{batch}"
                input_ids = torch.randint(1000, vocab, (batch, seq_length), device=device)
                try:
                    with torch.inference_mode():
                        ms = median_latency_ms(lambda: forward_model(input_ids=input_ids), params["benchmark.warmup"],
                                               params["benchmark.repeats"], device)
                except torch.OutOfMemoryError:
                    errors[f"{key}.{name}_{mode}"] = "out of memory"
                    torch.cuda.empty_cache()
                    continue
                latency.setdefault(key, {})[f"{name}_{mode}"] = round(ms, 3)
                rows.append({"batch_size": batch, "variant": name, "mode": mode, "latency_ms": round(ms, 3)})
    metrics = {
        "seq_length": seq_length,
        "dtype": str(dtype).removeprefix("torch."),
        "latency_ms": latency,
        "speedup": speedups(latency),
        "device": device_facts(device),
    }
    if errors:
        metrics["errors"] = errors
    return metrics, rows
