"""Kernel timing: cuBLAS dense against each cuSPARSELt config, per Linear shape and token count,
in child processes (`python -m engine.tuning`), and the timers the whole-model timings use.

Pure decisions (which config is fastest, how many input sets spill L2) are testable on a CPU with
fake timings; the timing itself needs a GPU.
"""
from __future__ import annotations

import json
import math
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .kernels import Precision, int8_sparse_mm, shape_name, sparse_mm

# A kernel config that makes no progress for this long is treated as failed.
STALL_TIMEOUT_S = 60.0
# Every cuSPARSELt config is timed at the largest batch size, only the fastest few there at the
# others: an fp16 config costs ~1 s to time on an H100, and the ranking barely moves with the size.
TOP_CONFIGS = 3


def best_alg(timing: dict) -> int | None:
    """The fastest cuSPARSELt config in a tune_linears result, or None when none ran."""
    sparse = timing["sparse_ms"]
    return min(sparse, key=sparse.__getitem__) if sparse else None


def rotation_count(bytes_per_call: int, l2_bytes: int, limit: int = 8) -> int:
    """Input sets a timing loop cycles through so that it reads memory, not L2, as a model's layer does."""
    return max(1, min(limit, math.ceil(2 * l2_bytes / max(bytes_per_call, 1))))


def median_ms(forward: Callable[[], object], warmup: int, repeats: int, device: torch.device,
              budget_s: float | None = None) -> float:
    """Median wall time of `repeats` calls after `warmup`: CUDA events on a GPU, a host clock on a CPU.

    With `budget_s`, warm-up and timing stop early once that much time is spent (one timed call at
    least): eager fp16 cuSPARSELt calls take ~200 ms each on the host (see _cslt_tokens_mm).
    """
    begin_all = time.perf_counter()

    def spent() -> bool:
        return budget_s is not None and time.perf_counter() - begin_all > budget_s

    for _ in range(warmup):
        forward()
        if spent():
            break
    times = []
    while len(times) < repeats and not (times and spent()):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            forward()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            forward()
            times.append((time.perf_counter() - begin) * 1000)
    return statistics.median(times)


def graph_time_ms(step: Callable[[int], object], count: int, replays: int = 10) -> float:
    """GPU time of one step: median replay time of a CUDA graph holding `count` steps, divided by count.

    step(0) runs eagerly first, so handles and cuSPARSELt's plan are made before the capture; the
    graph keeps the host's per-call work out of the figure.
    """
    step(0)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(count):
            step(i)
    replay_ms = median_ms(graph.replay, warmup=2, repeats=replays, device=torch.device("cuda"))
    del graph
    return replay_ms / count


class LinearProblem:
    """One Linear shape at one token count, on the GPU: 2:4 weights and inputs to time it with.

    Dense is always cuBLAS in `dtype`; the 2:4 kernel runs in `dtype` (precision fp16), or in int8
    (int8 weights and tokens, per-channel alpha and bias in the kernel, `dtype` out).
    """

    def __init__(self, out_features: int, in_features: int, tokens: int, dtype: torch.dtype,
                 precision: Precision = "fp16"):
        device = torch.device("cuda")
        bytes_per_call = (out_features * in_features + tokens * (in_features + out_features)) * dtype.itemsize
        self.sets = rotation_count(bytes_per_call, torch.cuda.get_device_properties(device).L2_cache_size)
        pattern = torch.tensor([0, 0, 1, 1], device=device, dtype=dtype).tile(out_features, in_features // 4)
        self.weights = [torch.randn(out_features, in_features, device=device, dtype=dtype) * pattern
                        for _ in range(self.sets)]
        self.inputs = [torch.randn(tokens, in_features, device=device, dtype=dtype) for _ in range(self.sets)]
        self.bias = torch.randn(out_features, device=device, dtype=dtype)
        self.int8 = precision == "int8"
        if self.int8:
            self.alpha = torch.rand(out_features, device=device) / 100
            self.sparse_inputs = [(x * 30).clamp(-127, 127).to(torch.int8) for x in self.inputs]
            self.packed = [torch._cslt_compress((w * 30).clamp(-127, 127).to(torch.int8)) for w in self.weights]
        else:
            self.sparse_inputs = self.inputs
            self.packed = [torch._cslt_compress(w) for w in self.weights]
        self.count = max(self.sets, 4)

    def dense_ms(self) -> float:
        return graph_time_ms(lambda i: F.linear(self.inputs[i % self.sets], self.weights[i % self.sets], self.bias),
                             self.count)

    def sparse_ms(self, alg_id: int) -> float:
        def step(i: int):
            packed, x = self.packed[i % self.sets], self.sparse_inputs[i % self.sets]
            if self.int8:
                return int8_sparse_mm(packed, x, self.alpha, self.bias, alg_id)
            return sparse_mm(packed, x, self.bias, alg_id)
        return graph_time_ms(step, self.count)

    def search(self) -> int:
        if self.int8:
            return int(torch._cslt_sparse_mm_search(self.packed[0], self.sparse_inputs[0].t(), alpha=self.alpha,
                                                    bias=self.bias, out_dtype=self.bias.dtype, transpose_result=True))
        return int(torch._cslt_sparse_mm_search(self.packed[0], self.inputs[0].t(), bias=self.bias,
                                                transpose_result=True))


Problem = tuple[int, int, int]  # (out_features, in_features, tokens)
EVENT = "@@event "


def _timing_child() -> None:
    """`python -m engine.tuning`: time the jobs read from stdin, one JSON event per line on stdout.

    Any error ends the process: a cuSPARSELt failure can leave the CUDA context unusable, so the
    parent reads the last "try" event to learn what failed and starts a fresh child without it.
    """
    spec = json.load(sys.stdin)
    dtype = getattr(torch, spec["dtype"])

    def emit(kind: str, problem, **fields) -> None:
        print(EVENT + json.dumps({"kind": kind, "problem": problem, **fields}), flush=True)

    with torch.inference_mode():
        for job in spec["jobs"]:
            problem = job["problem"]
            timer = LinearProblem(*problem, dtype, spec["precision"])
            if job["dense"]:
                emit("dense", problem, ms=timer.dense_ms())
            alg_ids = job["alg_ids"]
            if job["search"]:
                emit("try", problem, what="search")
                alg_ids = [timer.search()]
                emit("search", problem, alg_id=alg_ids[0])
            for alg_id in alg_ids:
                emit("try", problem, what=alg_id)
                emit("alg", problem, alg_id=alg_id, ms=timer.sparse_ms(alg_id))
            emit("done", problem)


def _events(child: subprocess.Popen, stall_timeout_s: float):
    """The child's events as they come; stops at its exit, or kills it after `stall_timeout_s` of silence."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in child.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while True:
        try:
            line = lines.get(timeout=stall_timeout_s)
        except queue.Empty:
            child.kill()
            raise TimeoutError(f"no progress for {stall_timeout_s:.0f} s") from None
        if line is None:
            return
        if line.startswith(EVENT):
            yield json.loads(line.removeprefix(EVENT))


def tune_linears(problems: list[Problem], dtype: torch.dtype, try_search: bool = True,
                 max_alg_id: int = 15, stall_timeout_s: float = STALL_TIMEOUT_S,
                 precision: Precision = "fp16",
                 alg_ids: dict[Problem, list[int]] | None = None) -> tuple[dict[Problem, dict], list[str]]:
    """GPU time (ms) of cuBLAS dense vs each cuSPARSELt config, per (out, in, tokens) problem.

    Runs in child processes (`python -m engine.tuning`): on an H100 with cuSPARSELt 0.8 the
    kernel search fails (an internal error) and an out-of-range alg_id can kill the CUDA context,
    which no exception handler undoes; a bad config may also hang (killed after `stall_timeout_s`
    without an event). A failed search is dropped for hand timing of alg_id 0..max_alg_id, or the
    ids `alg_ids` names for a problem (torch reports no count of configs for cuSPARSELt 0.8:
    get_max_alg_id() is None; an H100 has 0..35); a failed alg_id k ends every problem's ids at k.
    An fp16 config costs ~1 s to time there (host planning, see _cslt_tokens_mm), an int8 one ~0.1 s.
    precision int8 times the int8 2:4 kernel against cuBLAS in `dtype`.
    Returns ({problem: {"dense_ms", "sparse_ms": {alg_id: ms}, "search"}}, notes on what failed).
    """
    results = {p: {"dense_ms": None, "sparse_ms": {}, "search": "not tried"} for p in problems}
    pending, notes, search, alg_limit = list(problems), [], try_search, max_alg_id + 1
    wanted = {p: list(range(max_alg_id + 1)) if alg_ids is None else alg_ids[p] for p in problems}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                                    os.environ.get("PYTHONPATH")])))
    progress = tqdm(total=len(problems), desc="timing 2:4 kernels", unit="shape")
    while pending:
        spec = {"dtype": str(dtype).removeprefix("torch."), "precision": precision, "jobs": [
            {"problem": p, "dense": results[p]["dense_ms"] is None, "search": search,
             "alg_ids": [a for a in wanted[p] if a < alg_limit and a not in results[p]["sparse_ms"]]}
            for p in pending]}
        with tempfile.TemporaryFile("w+") as stderr:
            child = subprocess.Popen([sys.executable, "-m", "engine.tuning"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
            child.stdin.write(json.dumps(spec))
            child.stdin.close()
            last_try, error = None, None
            try:
                for event in _events(child, stall_timeout_s):
                    problem = tuple(event["problem"])
                    if event["kind"] == "try":
                        last_try = (problem, event["what"])
                        progress.set_postfix_str(f"{problem} {event['what']}")
                    elif event["kind"] == "dense":
                        results[problem]["dense_ms"] = event["ms"]
                    elif event["kind"] == "search":
                        results[problem]["search"] = f"search chose alg_id {event['alg_id']}"
                    elif event["kind"] == "alg":
                        results[problem]["sparse_ms"][event["alg_id"]] = event["ms"]
                    else:  # done
                        pending.remove(problem)
                        last_try = None
                        progress.update()
            except TimeoutError as stalled:
                error = str(stalled)
            if child.wait() == 0:
                continue
            stderr.seek(0)
            error = error or next((ln for ln in reversed(stderr.read().splitlines()) if "Error" in ln),
                                  "no error message")[:200]
        if last_try is None:
            raise RuntimeError(f"kernel timing process failed outside a kernel config: {error}")
        problem, what = last_try
        if what == "search":
            search = False
            notes.append(f"cuSPARSELt search failed ({error}); alg_ids timed by hand")
            for p in problems:
                results[p]["search"] = "failed; alg_ids timed by hand"
        else:
            pending.remove(problem)
            progress.update()
            if what > 0:
                alg_limit = min(alg_limit, what)
            notes.append(f"{problem}: alg_id {what} failed ({error}); ids from {what} on not used")
    progress.close()
    return results, notes


def top_configs(timing: dict, count: int = TOP_CONFIGS) -> list[int]:
    """The `count` fastest cuSPARSELt configs of a tune_linears result."""
    return sorted(timing["sparse_ms"], key=timing["sparse_ms"].__getitem__)[:count]


def measure_shapes(layers: dict[str, torch.nn.Linear], batch_sizes: list[int], seq_length: int, dtype: torch.dtype,
                   max_alg_id: int, precision: Precision = "fp16") -> tuple[dict, list[str]]:
    """Per weight shape ("outxin") and batch size: cuBLAS vs cuSPARSELt configs, and notes on failures.

    All configs 0..max_alg_id run at the largest batch size; the TOP_CONFIGS fastest there at the others.
    """
    if not layers:
        return {}, []
    shapes = sorted({tuple(linear.weight.shape) for linear in layers.values()})
    batch_sizes = sorted(set(batch_sizes))
    largest = batch_sizes[-1]
    results, notes = tune_linears([(*shape, largest * seq_length) for shape in shapes], dtype,
                                  max_alg_id=max_alg_id, precision=precision)
    others = [(*shape, batch * seq_length) for shape in shapes for batch in batch_sizes[:-1]]
    if others:
        search_failed = any(timing["search"].startswith("failed") for timing in results.values())
        more, more_notes = tune_linears(
            others, dtype, try_search=not search_failed, max_alg_id=max_alg_id, precision=precision,
            alg_ids={p: top_configs(results[(*p[:2], largest * seq_length)]) for p in others})
        results, notes = {**results, **more}, notes + more_notes
    return {shape_name(shape): {batch: results[(*shape, batch * seq_length)] for batch in batch_sizes}
            for shape in shapes}, notes


def random_ids(batch: int, seq_length: int, vocab_size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Seeded random token ids: the inputs whole models are timed and checked on."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq_length), generator=generator).to(device)


if __name__ == "__main__":
    _timing_child()
