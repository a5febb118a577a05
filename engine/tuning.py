"""Kernel timing: cuBLAS dense against every cuSPARSELt config the loaded library offers, per Linear
shape and token count, in child processes (CHILD_COMMAND).

The child's protocol (_serve) takes its timer as an argument and the parent (tune_linears) the
child's command, so the decisions (how many configs there are, what a failed search or config
ends, what the time budget leaves out, which config is fastest) are tested on a CPU with a fake
timer; the timing itself (LinearProblem) needs a GPU.
"""
from __future__ import annotations

import json
import math
import os
import queue
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

from .config import EngineConfig
from .kernels import INT8_GELU, PlannedMM, int8_gelu_sparse_mm, int8_sparse_mm, shape_name, sparse_mm
from .runtime import loaded_version
from .timing import median_ms

# A kernel config that makes no progress for this long is treated as failed.
STALL_TIMEOUT_S = 60.0
# The highest alg_id probed: cuSPARSELt 0.8 offers ~36 configs per problem on an H100, 0.10 many more
# (the fastest at 6144 tokens on an H200 were 42 and 46).
MAX_ALG_ID = 127
# Configs that may fail (each a fresh child process) before tuning stops trying configs.
MAX_FAILED_CONFIGS = 8


def best_alg(timing: dict) -> int | None:
    """The fastest cuSPARSELt config in a tune_linears result, or None when none ran."""
    sparse = timing["sparse_ms"]
    return min(sparse, key=sparse.__getitem__) if sparse else None


def rotation_count(bytes_per_call: int, l2_bytes: int, limit: int = 8) -> int:
    """Input sets a timing loop cycles through so that it reads memory, not L2, as a model's layer does."""
    return max(1, min(limit, math.ceil(2 * l2_bytes / max(bytes_per_call, 1))))


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
    (int8 weights and tokens, per-channel alpha and bias in the kernel, `dtype` out), or as INT8_GELU
    (int8, and the GELU epilogue's int8 out: through the plan cache only). `planned`: the plan
    cache's 2:4 call, or None for torch's.
    """

    def __init__(self, out_features: int, in_features: int, tokens: int, dtype: torch.dtype,
                 precision: str = "fp16", planned: PlannedMM | None = None):
        self.int8, self.gelu = precision in ("int8", INT8_GELU), precision == INT8_GELU
        self.planned = planned
        if self.gelu and planned is None:
            raise RuntimeError(f"{INT8_GELU} kernels run through the plan cache, which is off")
        device = torch.device("cuda")
        bytes_per_call = (out_features * in_features + tokens * (in_features + out_features)) * dtype.itemsize
        self.sets = rotation_count(bytes_per_call, torch.cuda.get_device_properties(device).L2_cache_size)
        pattern = torch.tensor([0, 0, 1, 1], device=device, dtype=dtype).tile(out_features, in_features // 4)
        self.weights = [torch.randn(out_features, in_features, device=device, dtype=dtype) * pattern
                        for _ in range(self.sets)]
        self.inputs = [torch.randn(tokens, in_features, device=device, dtype=dtype) for _ in range(self.sets)]
        self.bias = torch.randn(out_features, device=device, dtype=dtype)
        self.bias_float32 = self.bias.float()
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

    def sparse_step(self, i: int, alg_id: int) -> torch.Tensor:
        packed, x = self.packed[i % self.sets], self.sparse_inputs[i % self.sets]
        if self.gelu:
            return int8_gelu_sparse_mm(packed, x, self.alpha, self.bias, self.bias_float32, alg_id, GELU_SCALE,
                                       self.planned)
        if self.int8:
            return int8_sparse_mm(packed, x, self.alpha, self.bias, alg_id, self.planned)
        return sparse_mm(packed, x, self.bias, alg_id, self.planned)

    def sparse_ms(self, alg_id: int) -> float:
        return graph_time_ms(lambda i: self.sparse_step(i, alg_id), self.count)

    def run(self, alg_id: int) -> None:
        """One call, finished: raises where the library rejects the alg_id."""
        self.sparse_step(0, alg_id)
        torch.cuda.synchronize()

    def search(self) -> int:
        if self.int8:
            return int(torch._cslt_sparse_mm_search(self.packed[0], self.sparse_inputs[0].t(), alpha=self.alpha,
                                                    bias=self.bias, out_dtype=self.bias.dtype, transpose_result=True))
        return int(torch._cslt_sparse_mm_search(self.packed[0], self.inputs[0].t(), bias=self.bias,
                                                transpose_result=True))


Problem = tuple[int, int, int]  # (out_features, in_features, tokens)
GELU_SCALE = 40.0  # an INT8_GELU problem's output scaling: its GELU outputs (up to ~3) fill the int8 range
EVENT = "@@event "
# A child loads $TWOFOUR_CUSPARSELT before torch, as its parent did (engine/runtime.py).
CHILD_COMMAND = [sys.executable, "-c", "from engine.runtime import load_cusparselt; load_cusparselt(); "
                 "from engine.tuning import _timing_child; _timing_child()"]


def _serve(spec: dict, timer_for: Callable[[Problem], LinearProblem], emit: Callable[..., None],
           clock: Callable[[], float] = time.perf_counter) -> None:
    """The child's work (CHILD_COMMAND), with the GPU timer passed in (tests pass a fake one).

    spec["probe"]: one call of each alg_id from 0 up on that problem, until the library rejects one
    (the exception ends the process: the parent reads the count from the last "try"). spec["jobs"]:
    per problem, dense, cuSPARSELt's own search (its pick is timed first), then each alg_id asked for
    until the job's budget_s of timing is spent ("skipped" names the rest; one is always timed).
    """
    if "probe" in spec:
        problem = tuple(spec["probe"])
        timer = timer_for(problem)
        for alg_id in range(spec["max_alg_id"] + 1):
            emit("try", problem, what=alg_id)
            timer.run(alg_id)
        emit("done", problem)
        return
    for job in spec["jobs"]:
        problem = tuple(job["problem"])
        timer = timer_for(problem)
        if job["dense"]:
            emit("dense", problem, ms=timer.dense_ms())
        alg_ids = job["alg_ids"]
        if job["search"]:
            emit("try", problem, what="search")
            chosen = timer.search()
            emit("search", problem, alg_id=chosen)
            alg_ids = [chosen] + [alg_id for alg_id in alg_ids if alg_id != chosen]
        began = clock()
        for index, alg_id in enumerate(alg_ids):
            if index and job["budget_s"] is not None and clock() - began > job["budget_s"]:
                emit("skipped", problem, alg_ids=alg_ids[index:])
                break
            emit("try", problem, what=alg_id)
            emit("alg", problem, alg_id=alg_id, ms=timer.sparse_ms(alg_id))
        emit("done", problem)


def _timing_child() -> None:
    """CHILD_COMMAND: the spec read from stdin, one JSON event per line on stdout.

    Any error ends the process: a cuSPARSELt failure can leave the CUDA context unusable, so the
    parent reads the last "try" event to learn what failed and starts a fresh child without it.
    """
    from .plan_cache import planned_matmul  # with the plan cache an fp16 config's timed calls plan once

    spec = json.load(sys.stdin)
    dtype = getattr(torch, spec["dtype"])
    planned = planned_matmul(EngineConfig.from_env())  # the parent's configuration (_run_child)
    with torch.inference_mode():
        _serve(spec, lambda problem: LinearProblem(*problem, dtype, spec["precision"], planned), emit)


def emit(kind: str, problem, **fields) -> None:
    """One event of a timing child, on stdout."""
    print(EVENT + json.dumps({"kind": kind, "problem": problem, **fields}), flush=True)


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


def _run_child(spec: dict, on_event: Callable[[dict], None], stall_timeout_s: float,
               command: list[str], config: EngineConfig | None) -> tuple[object, str | None]:
    """Run one timing child on `spec` under `config` (None: the environment's), each event to on_event as
    it comes. Returns (the last "try" not followed by its result, or None; the child's error line, or
    None when it exited cleanly)."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, **(config or EngineConfig.from_env()).as_env(),
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryFile("w+") as stderr:
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                 env=env)
        child.stdin.write(json.dumps(spec))
        child.stdin.close()
        last_try, error = None, None
        try:
            for event in _events(child, stall_timeout_s):
                if event["kind"] == "try":
                    last_try = (tuple(event["problem"]), event["what"])
                elif event["kind"] in ("alg", "search", "done"):
                    last_try = None
                on_event(event)
        except TimeoutError as stalled:
            error = str(stalled)
        if child.wait() == 0 and error is None:
            return None, None
        stderr.seek(0)
        error = error or next((ln for ln in reversed(stderr.read().splitlines()) if "Error" in ln),
                              "no error message")[:200]
    return last_try, error


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def alg_id_count(problem: Problem, dtype: torch.dtype, precision: str = "fp16",
                 max_alg_id: int = MAX_ALG_ID, stall_timeout_s: float = STALL_TIMEOUT_S,
                 command: list[str] = CHILD_COMMAND, config: EngineConfig | None = None) -> tuple[int, str]:
    """(how many kernel configs the loaded cuSPARSELt offers for this problem, up to max_alg_id + 1;
    a note saying how that was found). torch reports no count (get_max_alg_id() is None for 0.8 and
    0.10): a child calls alg_id 0, 1, ... until the library rejects one, which ends that child."""
    spec = {"dtype": _dtype_name(dtype), "precision": precision, "probe": problem, "max_alg_id": max_alg_id}
    last_try, error = _run_child(spec, lambda event: None, stall_timeout_s, command, config)
    if error is None:
        return max_alg_id + 1, (f"{precision}: alg_ids 0..{max_alg_id} all ran (the cap, max_alg_id; "
                                "the library may offer more)")
    if last_try is None:
        raise RuntimeError(f"kernel timing process failed outside a kernel config: {error}")
    count = last_try[1]
    if count == 0:
        return 0, f"{precision}: alg_id 0 failed ({error}): no 2:4 config runs"
    return count, f"{precision}: cuSPARSELt offers alg_ids 0..{count - 1} (alg_id {count}: {error})"


def search_works() -> bool:
    """Whether cuSPARSELt's own search works with the library loaded: it errors on 0.8 (and leaves the
    CUDA context broken), it works on 0.10."""
    version = loaded_version()
    return version is not None and tuple(int(part) for part in version.split(".")) >= (0, 10, 0)


def tune_linears(problems: list[Problem], dtype: torch.dtype, try_search: bool | None = None,
                 max_alg_id: int = MAX_ALG_ID, stall_timeout_s: float = STALL_TIMEOUT_S,
                 precision: str = "fp16", budget_s: float | None = None,
                 command: list[str] = CHILD_COMMAND,
                 config: EngineConfig | None = None) -> tuple[dict[Problem, dict], list[str]]:
    """GPU time (ms) of cuBLAS dense vs every cuSPARSELt config the loaded library offers (alg_id_count,
    at most 0..max_alg_id), per (out, in, tokens) problem.

    Runs in child processes (CHILD_COMMAND): on cuSPARSELt 0.8 the kernel search fails
    (an internal error) and leaves the CUDA context broken, and an out-of-range alg_id can kill it,
    which no exception handler undoes; a bad config may also hang (killed after `stall_timeout_s`
    without an event). The search (try_search; by default where it works, search_works) picks a
    config that is timed first; a failed search is dropped for hand timing only; a config that fails is not tried again on any
    problem (each failure costs a fresh child: after MAX_FAILED_CONFIGS, only dense is timed).
    An fp16 config costs far more to time than an int8 one (host planning, see _cslt_tokens_mm), so
    with `budget_s` each problem gets budget_s / len(problems) seconds of config timing and the
    configs past it are listed as "untimed". precision int8 times the int8 2:4 kernel against
    cuBLAS in `dtype`, INT8_GELU the same with the GELU epilogue (cuSPARSELt's search cannot take an
    epilogue: never searched).
    Returns ({problem: {"dense_ms", "sparse_ms": {alg_id: ms}, "search", "alg_ids_offered",
    "untimed"}}, notes on what was found and what failed).
    """
    count, note = alg_id_count(min(problems, key=lambda p: p[2]), dtype, precision, max_alg_id,
                               stall_timeout_s, command, config)
    results = {p: {"dense_ms": None, "sparse_ms": {}, "search": "not tried", "alg_ids_offered": count,
                    "untimed": []} for p in problems}
    search = (search_works() if try_search is None else try_search) and precision != INT8_GELU
    pending, notes, failed = list(problems), [note], set()
    per_problem_s = None if budget_s is None else budget_s / len(problems)
    progress = tqdm(total=len(problems), desc=f"timing {precision} 2:4 kernels", unit="shape")

    def record(event: dict) -> None:
        problem, kind = tuple(event["problem"]), event["kind"]
        if kind == "try":
            progress.set_postfix_str(f"{problem} {event['what']}")
        elif kind == "dense":
            results[problem]["dense_ms"] = event["ms"]
        elif kind == "search":
            results[problem]["search"] = f"search chose alg_id {event['alg_id']}"
        elif kind == "alg":
            results[problem]["sparse_ms"][event["alg_id"]] = event["ms"]
        elif kind == "skipped":
            results[problem]["untimed"] = event["alg_ids"]
        else:  # done
            pending.remove(problem)
            progress.update()

    while pending:
        configs = len(failed) < MAX_FAILED_CONFIGS  # past that, the rest are timed dense only
        spec = {"dtype": _dtype_name(dtype), "precision": precision, "jobs": [
            {"problem": p, "dense": results[p]["dense_ms"] is None, "budget_s": per_problem_s,
             "search": configs and search and results[p]["search"] == "not tried",
             "alg_ids": [a for a in range(count) if configs and a not in failed and a not in results[p]["sparse_ms"]]}
            for p in pending]}
        last_try, error = _run_child(spec, record, stall_timeout_s, command, config)
        if error is None:
            continue
        if last_try is None:
            raise RuntimeError(f"kernel timing process failed outside a kernel config: {error}")
        problem, what = last_try
        if what == "search":
            search = False
            notes.append(f"{precision}: cuSPARSELt search failed ({error}); alg_ids timed by hand")
            for p in problems:
                results[p]["search"] = "failed; alg_ids timed by hand"
        else:
            failed.add(what)
            notes.append(f"{problem}: {precision} alg_id {what} failed ({error}); not tried again")
            if len(failed) == MAX_FAILED_CONFIGS:
                notes.append(f"{precision}: {MAX_FAILED_CONFIGS} configs failed: the rest timed dense only")
    progress.close()
    untimed = sum(len(result["untimed"]) for result in results.values())
    if untimed:
        notes.append(f"{precision}: tuning budget {budget_s:.0f} s ({per_problem_s:.1f} s per shape and batch "
                     f"size) left {untimed} of {len(problems) * count} configs untimed")
    return results, notes


def measure_shapes(layers: dict[str, torch.nn.Linear], batch_sizes: list[int], seq_length: int, dtype: torch.dtype,
                   max_alg_id: int, precision: str = "fp16",
                   budget_s: float | None = None, config: EngineConfig | None = None) -> tuple[dict, list[str]]:
    """Per weight shape ("outxin") and batch size: cuBLAS vs every cuSPARSELt config (tune_linears,
    within budget_s), and notes on what was found and what failed."""
    if not layers:
        return {}, []
    shapes = sorted({tuple(linear.weight.shape) for linear in layers.values()})
    batch_sizes = sorted(set(batch_sizes))
    results, notes = tune_linears([(*shape, batch * seq_length) for shape in shapes for batch in batch_sizes], dtype,
                                  max_alg_id=max_alg_id, precision=precision, budget_s=budget_s, config=config)
    return {shape_name(shape): {batch: results[(*shape, batch * seq_length)] for batch in batch_sizes}
            for shape in shapes}, notes


def random_ids(batch: int, seq_length: int, vocab_size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Seeded random token ids: the inputs whole models are timed and checked on."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq_length), generator=generator).to(device)
