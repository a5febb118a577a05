"""The GPU 2:4 engine: a Linear that calls cuSPARSELt directly, per-shape kernel timing, CUDA graphs.

Pure torch (no transformers), so every decision here is testable on a CPU with fake timings.

Why not `torch.sparse.to_sparse_semi_structured`: measured on an H100 (torch 2.11, cuSPARSELt
0.8) its default kernel config (alg_id 0) is among the slowest, the tensor subclass adds copies
around every matmul, and each cuSPARSELt call pays milliseconds of host-side planning. Here the
weight is packed once, the kernel config is chosen per shape by timing, and a model runs as a
replayed CUDA graph (optionally of the torch.compile'd model), which leaves the host work out.
"""
from __future__ import annotations

import contextlib
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
from torch import nn
from torch.utils import _pytree as pytree
from tqdm.auto import tqdm

from . import int8

CUSPARSELT = "cusparselt"
MIN_CAPABILITY = (8, 0)
# cuSPARSELt's dense operand needs its rows (here: tokens) to fill 16 bytes: 8 fp16 or 16 int8 values.
TOKEN_ALIGNMENT = {torch.float16: 8, torch.bfloat16: 8, torch.int8: 16}
# A kernel config that makes no progress for this long is treated as failed.
STALL_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------- decisions (pure)
def sparse_backend(capability: tuple[int, int] | None, cusparselt_available: bool) -> tuple[str | None, str]:
    """(backend, why) for a device: the 2:4 kernel library to use, or None and why it stays dense.

    cuSPARSELt runs 2:4 on compute capability 8.x and 9.x alike and takes a kernel config per
    call; the CUTLASS path the tutorial forces runs on 8.x only (it raises on 9.x), so it is not used.
    """
    if capability is None:
        return None, "dense: no CUDA device"
    major, minor = capability
    if (major, minor) < MIN_CAPABILITY:
        return None, f"dense: compute capability {major}.{minor} < 8.0 has no 2:4 sparse tensor cores"
    if not cusparselt_available:
        return None, f"dense: compute capability {major}.{minor}, but this torch build has no cuSPARSELt"
    return CUSPARSELT, f"compute capability {major}.{minor}: cuSPARSELt 2:4 kernels"


def device_backend(device: torch.device) -> tuple[str | None, str]:
    if device.type != "cuda":
        return sparse_backend(None, False)
    return sparse_backend(torch.cuda.get_device_capability(device), torch.backends.cusparselt.is_available())


def token_buckets(batch_sizes: list[int], seq_length: int) -> list[int]:
    """The token counts (batch x sequence) the kernels are tuned for, ascending."""
    return sorted({batch * seq_length for batch in batch_sizes})


def bucket_for(tokens: int, buckets: list[int]) -> int:
    """The smallest bucket that holds `tokens`; past the largest, the largest.
    A plain loop: torch.compile traces it without a graph break."""
    for bucket in buckets:
        if tokens <= bucket:
            return bucket
    return buckets[-1]


def best_alg(timing: dict) -> int | None:
    """The fastest cuSPARSELt config in a tune_linears result, or None when none ran."""
    sparse = timing["sparse_ms"]
    return min(sparse, key=sparse.__getitem__) if sparse else None


def choose_alg(timing: dict, mode: str, min_speedup: float) -> int | None:
    """The cuSPARSELt config (alg_id) a layer runs at one bucket, or None for the dense matmul.

    `timing` is a tune_linears result. auto keeps 2:4 only where its fastest config beats dense by
    `min_speedup`; all takes the fastest config wherever one ran; none is always dense.
    """
    best = best_alg(timing)
    if mode == "none" or best is None:
        return None
    if mode == "all" or timing["dense_ms"] / timing["sparse_ms"][best] >= min_speedup:
        return best
    return None


def choose_variant(latency_ms: dict[str, float], min_speedup: float, baseline: str = "dense") -> str:
    """The fastest of several whole-model variants; the baseline unless another beats it by min_speedup."""
    best = min(latency_ms, key=latency_ms.__getitem__)
    return best if latency_ms[baseline] / latency_ms[best] >= min_speedup else baseline


def rotation_count(bytes_per_call: int, l2_bytes: int, limit: int = 8) -> int:
    """Input sets a timing loop cycles through so that it reads memory, not L2, as a model's layer does."""
    return max(1, min(limit, math.ceil(2 * l2_bytes / max(bytes_per_call, 1))))


# --------------------------------------------------------------------------- the sparse Linear
def _cslt_tokens_mm(packed: torch.Tensor, x2d: torch.Tensor, **kernel_args) -> torch.Tensor:
    """torch._cslt_sparse_mm on a (tokens, in) input, (tokens, out) out: tokens padded to the
    kernel's alignment and cut back after.

    cuSPARSELt computes W @ x2d.t(); x2d.t() of a row-major x2d is column-major, which it reads in
    place, and transpose_result hands back the (tokens, out) row-major result: no transposed copies.
    Measured on an H100 (torch 2.11, cuSPARSELt 0.8): with transpose_result each fp16 call spends
    ~200 ms planning on the host (~1 ms without), so this is for CUDA-graph replay, where the host
    work is gone; without it, every consumer would need a transposing copy of the output.
    """
    tokens = x2d.shape[0]
    pad = -tokens % TOKEN_ALIGNMENT[x2d.dtype]
    if pad:
        x2d = F.pad(x2d, (0, 0, 0, pad))
    out = torch._cslt_sparse_mm(packed, x2d.t(), transpose_result=True, **kernel_args)
    return out[:tokens] if pad else out


def sparse_mm(packed: torch.Tensor, x2d: torch.Tensor, bias: torch.Tensor | None, alg_id: int) -> torch.Tensor:
    """x2d @ W.t() + bias with W packed by torch._cslt_compress."""
    return _cslt_tokens_mm(packed, x2d, bias=bias, alg_id=alg_id)


def int8_sparse_mm(packed: torch.Tensor, x_q: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor,
                   alg_id: int) -> torch.Tensor:
    """(x_q @ W_q.t()) * alpha + bias for int8 x_q (tokens, in) and an int8 2:4 W_q packed by
    torch._cslt_compress: int32 accumulation, the per-output-channel alpha (input scale x weight
    scale) and the bias applied by the kernel, out in the bias's dtype (fp16: no pass after it)."""
    return _cslt_tokens_mm(packed, x_q, alpha=alpha, bias=bias, out_dtype=bias.dtype, alg_id=alg_id)


class SparseLinear(nn.Module):
    """An inference Linear that runs its 2:4 weight on cuSPARSELt where that measured faster.

    `kernels` maps each token bucket to a cuSPARSELt alg_id, or to None where the dense matmul
    won; the dense weight is kept only when some bucket (or a later re-plan) needs it.
    """

    def __init__(self, linear: nn.Linear, kernels: dict[int, int | None], keep_dense: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.kernels = dict(kernels)
        self.buckets = sorted(self.kernels)
        weight = linear.weight.detach()
        self.pack(weight)
        self.register_buffer("weight", weight if keep_dense or None in self.kernels.values() else None)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())

    def pack(self, weight: torch.Tensor) -> None:
        self.register_buffer("packed", torch._cslt_compress(weight))

    def sparse_matmul(self, x2d: torch.Tensor, alg_id: int) -> torch.Tensor:
        return sparse_mm(self.packed, x2d, self.bias, alg_id)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2d = x.reshape(-1, self.in_features).contiguous()
        alg_id = self.kernels[bucket_for(x2d.shape[0], self.buckets)]
        if alg_id is None:
            out = F.linear(x2d, self.weight, self.bias)
        else:
            out = self.sparse_matmul(x2d, alg_id)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernels={self.kernels}"


class Int8SparseLinear(SparseLinear):
    """A SparseLinear whose 2:4 kernel is int8, with the math of stages/int8.py (`kernels` holds int8
    alg_ids): static smoothing and scales, so quantizing the input is one pointwise op, which
    torch.compile fuses into the op before, and the kernel's fp16 output (alpha and bias applied
    inside) is final."""

    def __init__(self, linear: nn.Linear, kernels: dict[int, int | None], keep_dense: bool,
                 smoothing: torch.Tensor, input_scale: float):
        super().__init__(linear, kernels, keep_dense)
        weights = int8.Int8Weights(linear, smoothing, input_scale)
        self.register_buffer("packed", torch._cslt_compress(weights.weight_q))
        self.register_buffer("alpha", weights.alpha)
        self.register_buffer("multipliers", weights.multipliers)
        if self.bias is None:  # the kernel's output dtype is the bias's
            self.bias = torch.zeros(self.out_features, dtype=linear.weight.dtype, device=linear.weight.device)

    def pack(self, weight: torch.Tensor) -> None:
        """Packed in __init__, once the smoothing is known."""

    def sparse_matmul(self, x2d: torch.Tensor, alg_id: int) -> torch.Tensor:
        return int8_sparse_mm(self.packed, int8.quantize_input(x2d, self.multipliers), self.alpha, self.bias, alg_id)


def swap_linears(model: nn.Module, kernels_by_layer: dict[str, dict[int, int | None]], keep_dense: bool = False,
                 int8_calibration: dict[str, tuple[torch.Tensor, float]] | None = None) -> nn.Module:
    """Replace the named nn.Linears by SparseLinears with their per-bucket kernels (in place);
    layers in `int8_calibration` become Int8SparseLinears with that (smoothing, input scale)."""
    int8_calibration = int8_calibration or {}
    # Layers calibrated together (same smoothing and scale) share one multipliers tensor, so the
    # compiled kernel before them reads it once (torch 2.11's inductor still writes one int8 copy each).
    shared_multipliers: dict[tuple, torch.Tensor] = {}
    for name, kernels in kernels_by_layer.items():
        linear = model.get_submodule(name)
        if name in int8_calibration:
            smoothing, input_scale = int8_calibration[name]
            module = Int8SparseLinear(linear, kernels, keep_dense, smoothing, input_scale)
            key = (input_scale, smoothing.cpu().numpy().tobytes())
            module.multipliers = shared_multipliers.setdefault(key, module.multipliers)
        else:
            module = SparseLinear(linear, kernels, keep_dense)
        model.set_submodule(name, module)
    return model


# --------------------------------------------------------------------------- timing
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

    Dense is always cuBLAS in `dtype`; the 2:4 kernel runs in `dtype`, or in int8 (int8 weights
    and tokens, per-channel alpha and bias in the kernel, `dtype` out) when `int8` is set.
    """

    def __init__(self, out_features: int, in_features: int, tokens: int, dtype: torch.dtype, int8: bool = False):
        device = torch.device("cuda")
        bytes_per_call = (out_features * in_features + tokens * (in_features + out_features)) * dtype.itemsize
        self.sets = rotation_count(bytes_per_call, torch.cuda.get_device_properties(device).L2_cache_size)
        pattern = torch.tensor([0, 0, 1, 1], device=device, dtype=dtype).tile(out_features, in_features // 4)
        self.weights = [torch.randn(out_features, in_features, device=device, dtype=dtype) * pattern
                        for _ in range(self.sets)]
        self.inputs = [torch.randn(tokens, in_features, device=device, dtype=dtype) for _ in range(self.sets)]
        self.bias = torch.randn(out_features, device=device, dtype=dtype)
        self.int8 = int8
        if int8:
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
    """`python -m stages.sparse_engine`: time the jobs read from stdin, one JSON event per line on stdout.

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
            timer = LinearProblem(*problem, dtype, int8=spec["int8"])
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
                 max_alg_id: int = 15, stall_timeout_s: float = STALL_TIMEOUT_S, int8: bool = False,
                 alg_ids: dict[Problem, list[int]] | None = None) -> tuple[dict[Problem, dict], list[str]]:
    """GPU time (ms) of cuBLAS dense vs each cuSPARSELt config, per (out, in, tokens) problem.

    Runs in child processes (`python -m stages.sparse_engine`): on an H100 with cuSPARSELt 0.8 the
    kernel search fails (an internal error) and an out-of-range alg_id can kill the CUDA context,
    which no exception handler undoes; a bad config may also hang (killed after `stall_timeout_s`
    without an event). A failed search is dropped for hand timing of alg_id 0..max_alg_id, or the
    ids `alg_ids` names for a problem (torch reports no count of configs for cuSPARSELt 0.8:
    get_max_alg_id() is None; an H100 has 0..35); a failed alg_id k ends every problem's ids at k.
    An fp16 config costs ~1 s to time there (host planning, see _cslt_tokens_mm), an int8 one ~0.1 s.
    `int8` times the int8 2:4 kernel against cuBLAS in `dtype`.
    Returns ({problem: {"dense_ms", "sparse_ms": {alg_id: ms}, "search"}}, notes on what failed).
    """
    results = {p: {"dense_ms": None, "sparse_ms": {}, "search": "not tried"} for p in problems}
    pending, notes, search, alg_limit = list(problems), [], try_search, max_alg_id + 1
    wanted = {p: list(range(max_alg_id + 1)) if alg_ids is None else alg_ids[p] for p in problems}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                                    os.environ.get("PYTHONPATH")])))
    progress = tqdm(total=len(problems), desc="timing 2:4 kernels", unit="shape")
    while pending:
        spec = {"dtype": str(dtype).removeprefix("torch."), "int8": int8, "jobs": [
            {"problem": p, "dense": results[p]["dense_ms"] is None, "search": search,
             "alg_ids": [a for a in wanted[p] if a < alg_limit and a not in results[p]["sparse_ms"]]}
            for p in pending]}
        with tempfile.TemporaryFile("w+") as stderr:
            child = subprocess.Popen([sys.executable, "-m", "stages.sparse_engine"], stdin=subprocess.PIPE,
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


# --------------------------------------------------------------------------- CUDA graphs
def _clone_tensors(output):
    return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, output)


class CudaGraphRunner(nn.Module):
    """Runs a QA-style model as one replayed CUDA graph per input signature (shapes + which inputs).

    A signature is captured on its first call when `capturable(input_ids.shape)` says so (the
    shapes the kernels were tuned for); any other call runs the model eagerly. With `compile`, what
    is captured is torch.compile(model) (static shapes): on an H100 that fuses each Linear's int8
    quantization into the LayerNorm or GELU before it, and made dense bert-base ~10% faster than
    capturing the eager modules. Graphs share one memory pool; outputs are cloned, so they stay
    valid after the next call. Warm-up and capture run inside `capture_context(inputs)`, where the
    caller can say what the inputs imply.
    """

    def __init__(self, model: nn.Module, capturable: Callable[[torch.Size], bool] = lambda shape: True,
                 capture_context: Callable[[dict], contextlib.AbstractContextManager] | None = None,
                 compile: bool = False):
        super().__init__()
        self.model = model
        self.captured = torch.compile(model, dynamic=False) if compile else model
        self.capture_context = capture_context or (lambda inputs: contextlib.nullcontext())
        self.config = getattr(model, "config", None)
        self.capturable = capturable
        self.graphs: dict[tuple, tuple[dict, torch.cuda.CUDAGraph, object]] = {}
        self.pool = None

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None):
        inputs = {name: tensor for name, tensor in (("input_ids", input_ids), ("attention_mask", attention_mask),
                                                    ("token_type_ids", token_type_ids)) if tensor is not None}
        signature = tuple((name, tuple(t.shape), t.dtype) for name, t in inputs.items())
        entry = self.graphs.get(signature)
        if entry is None:
            if not self.capturable(input_ids.shape):
                return self.model(**inputs)
            entry = self.graphs[signature] = self._capture(inputs)
        static_inputs, graph, static_output = entry
        for name, tensor in inputs.items():
            static_inputs[name].copy_(tensor)
        graph.replay()
        return _clone_tensors(static_output)

    def _capture(self, inputs: dict[str, torch.Tensor]):
        static_inputs = {name: tensor.clone() for name, tensor in inputs.items()}
        with self.capture_context(inputs):
            # Warm up once on a side stream (cuBLAS/cuSPARSELt handles, workspaces), as capture requires.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.captured(**static_inputs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                static_output = self.captured(**static_inputs)
        self.pool = graph.pool()
        return static_inputs, graph, static_output


if __name__ == "__main__":
    _timing_child()
