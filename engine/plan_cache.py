"""2:4 calls without per-call host planning: each cuSPARSELt matmul plan made once and kept.

torch._cslt_sparse_mm makes its descriptors and plan on every call; with transpose_result (what the
engine needs for a row-major result) an fp16 call spends ~250 ms of that on the host, in every
cuSPARSELt version measured, so an fp16 2:4 model run eagerly took ~10 s per forward, every CUDA
graph capture paid it per layer, and every kernel config timed paid it several times. cslt_plans.c
makes the same descriptors and plan once per (weight shape, token count, kernel config, bias) and
runs it; PlanCache keeps them, torch's allocator and stream stay in charge of memory and ordering.

Optional, off unless TWOFOUR_PLAN_CACHE=1 (or enable() is called): the C file is compiled on first
use (the C compiler, cusparseLt.h, and the CUDA headers it includes; TWOFOUR_CUSPARSELT_INCLUDE may
name cusparseLt.h's folder) against the cuSPARSELt this process loaded, and checked against
torch._cslt_sparse_mm (fp16 and int8, eager and inside a CUDA graph) before the engine's 2:4 calls
(kernels.PLANNED_MM) go through it. Anything missing or any mismatch leaves the engine on
torch._cslt_sparse_mm and says why in one line.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from . import kernels
from .runtime import mapped_cusparselt

ENV_VAR = "TWOFOUR_PLAN_CACHE"
INCLUDE_ENV = "TWOFOUR_CUSPARSELT_INCLUDE"
SOURCE = Path(__file__).with_name("cslt_plans.c")
DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.int8: 2}  # cslt_plans.c's TWOFOUR_FP16, ...
# torch._cslt_compress allocates numel * factor / 16 elements: the weight's out_features come back from it.
COMPRESSION_FACTOR = {torch.float16: 9, torch.bfloat16: 9, torch.int8: 10}
_ONE = ctypes.c_float(1.0)  # alpha where no per-row vector is given
_state: dict = {}  # "reason": why enable() left the plan cache off ("" once on), "cache": the PlanCache


class PlanCacheError(RuntimeError):
    """The plan cache cannot be built or used here; the message is one line saying why."""


def include_candidates() -> list[Path]:
    """Folders that may hold cusparseLt.h and the CUDA headers: TWOFOUR_CUSPARSELT_INCLUDE, the include
    folder beside each cuSPARSELt loaded, the CUDA toolkit's, and the nvidia wheels' on sys.path."""
    nvcc = shutil.which("nvcc")
    toolkits = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), nvcc and Path(nvcc).resolve().parent.parent,
                "/usr/local/cuda"]
    found = [os.environ.get(INCLUDE_ENV), *(Path(path).parent.parent / "include" for path in mapped_cusparselt()),
             *(Path(toolkit) / "include" for toolkit in toolkits if toolkit)]
    for entry in sys.path:
        found += sorted(Path(entry or ".").glob("nvidia/*/include"))
    return [Path(folder) for folder in found if folder]


def first_holding(header: str, folders: list[Path]) -> Path | None:
    return next((folder for folder in folders if (folder / header).is_file()), None)


def build(cache_dir: Path | None = None) -> Path:
    """cslt_plans.c compiled against the cuSPARSELt this process runs (reused while the source, the
    library and the header stay the same); PlanCacheError says what is missing."""
    libraries = mapped_cusparselt()
    if not libraries:
        raise PlanCacheError("no cuSPARSELt loaded in this process (a CUDA build of torch loads one)")
    folders = include_candidates()
    header, cuda_headers = first_holding("cusparseLt.h", folders), first_holding("driver_types.h", folders)
    if header is None:
        raise PlanCacheError(f"cusparseLt.h not found: set {INCLUDE_ENV} to the folder that holds it "
                             "(the nvidia-cusparselt wheel's include/)")
    if cuda_headers is None:
        raise PlanCacheError("the CUDA headers (driver_types.h) not found: install the CUDA toolkit or set CUDA_HOME")
    key = hashlib.sha256("\n".join([SOURCE.read_text(), libraries[0], str(header)]).encode()).hexdigest()[:16]
    cache_dir = cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "twofour"
    built = cache_dir / f"cslt_plans-{key}.so"
    if built.is_file():
        return built
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = built.with_suffix(f".{os.getpid()}.tmp")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise PlanCacheError("no C compiler (cc, gcc or $CC)")
    command = [compiler, "-O2", "-shared", "-fPIC", "-o", str(partial), str(SOURCE), f"-I{header}", f"-I{cuda_headers}",
               libraries[0]]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as err:
        raise PlanCacheError(f"building {SOURCE.name}: {err}") from None
    if result.returncode:
        lines = result.stderr.strip().splitlines() or ["no message"]
        # The compiler's first "error:" line names the cause; the last is often only a caret.
        cause = next((line.strip() for line in lines if "error" in line), lines[-1].strip())
        raise PlanCacheError(f"building {SOURCE.name} failed: {cause}")
    partial.rename(built)
    return built


class PlanCache:
    """torch._cslt_sparse_mm(packed, x2d.t(), transpose_result=True, ...) with each plan made once."""

    def __init__(self, library: ctypes.CDLL, status_text):
        self.library, self.status_text = library, status_text
        library.twofour_plan_init.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                                              ctypes.c_int, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32,
                                              ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t)]
        library.twofour_matmul.argtypes = [ctypes.c_void_p] * 7
        self.plans: dict[tuple, tuple[ctypes.c_void_p, int]] = {}

    def check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"cuSPARSELt {what}: {self.status_text(status)} (status {status})")

    def plan(self, key: tuple, bias: torch.Tensor | None, alpha_vector: bool) -> tuple[ctypes.c_void_p, int]:
        m, n, k, dtype, out_dtype, alg_id = key[:6]
        entry, workspace = ctypes.c_void_p(), ctypes.c_size_t()
        self.check(self.library.twofour_plan_init(m, n, k, DTYPE_CODES[dtype], DTYPE_CODES[out_dtype], alg_id,
                                                  None if bias is None else bias.data_ptr(), int(alpha_vector),
                                                  ctypes.byref(entry), ctypes.byref(workspace)), "plan")
        return entry, workspace.value

    def matmul(self, packed: torch.Tensor, x2d: torch.Tensor, bias: torch.Tensor | None, alpha: torch.Tensor | None,
               out_dtype: torch.dtype | None, alg_id: int) -> torch.Tensor:
        """(tokens, out) = x2d @ W.t() (* alpha) (+ bias) for a contiguous (tokens, in) x2d and W packed by
        torch._cslt_compress; the plan for this shape, kernel and bias made on the first call."""
        x2d = x2d.contiguous()  # the plan reads it row-major; a compiled graph may hand over other strides
        tokens, in_features = x2d.shape
        out_features = packed.numel() * 16 // COMPRESSION_FACTOR[packed.dtype] // in_features
        out_dtype = out_dtype or x2d.dtype
        key = (out_features, tokens, in_features, x2d.dtype, out_dtype, alg_id,
               None if bias is None else bias.data_ptr(), alpha is not None, x2d.device.index)
        if key not in self.plans:
            self.plans[key] = self.plan(key, bias, alpha is not None)
        entry, workspace_bytes = self.plans[key]
        out = torch.empty((tokens, out_features), dtype=out_dtype, device=x2d.device)
        workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=x2d.device)
        alpha_pointer = alpha.data_ptr() if alpha is not None else ctypes.addressof(_ONE)
        stream = torch.cuda.current_stream(x2d.device).cuda_stream
        self.check(self.library.twofour_matmul(entry, alpha_pointer, packed.data_ptr(), x2d.data_ptr(), out.data_ptr(),
                                               workspace.data_ptr() or None, stream), "matmul")
        return out


@torch.library.custom_op("twofour::planned_cslt_mm", mutates_args=())
def planned_cslt_mm(packed: torch.Tensor, x2d: torch.Tensor, bias: torch.Tensor | None, alpha: torch.Tensor | None,
                    out_dtype: torch.dtype | None, alg_id: int) -> torch.Tensor:
    """PlanCache.matmul as one op torch.compile keeps whole (it cannot trace a ctypes call)."""
    return _state["cache"].matmul(packed, x2d, bias, alpha, out_dtype, alg_id)


@planned_cslt_mm.register_fake
def _(packed, x2d, bias, alpha, out_dtype, alg_id):
    out_features = packed.numel() * 16 // COMPRESSION_FACTOR[packed.dtype] // x2d.shape[1]
    return x2d.new_empty((x2d.shape[0], out_features), dtype=out_dtype or x2d.dtype)


def mismatch(cache: PlanCache) -> str | None:
    """Where the planned calls differ from torch._cslt_sparse_mm on this GPU (fp16 and int8, eager and
    replayed from a CUDA graph), or None when they agree."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    pattern = torch.tensor([0, 0, 1, 1], device="cuda", dtype=torch.float16)
    for out_features, in_features, tokens in ((64, 128, 32), (3072, 768, 112)):
        weight = torch.randn(out_features, in_features, device="cuda", dtype=torch.float16, generator=generator)
        weight = weight * pattern.tile(out_features, in_features // 4)
        x = torch.randn(tokens, in_features, device="cuda", dtype=torch.float16, generator=generator)
        bias = torch.randn(out_features, device="cuda", dtype=torch.float16, generator=generator)
        alpha = torch.rand(out_features, device="cuda", generator=generator) / 100
        cases = {"fp16": (torch._cslt_compress(weight), x, bias, None, None),
                 "int8": (torch._cslt_compress((weight * 30).clamp(-127, 127).to(torch.int8)),
                          (x * 30).clamp(-127, 127).to(torch.int8), bias, alpha, torch.float16)}
        for name, (packed, x_in, bias_in, alpha_in, out_dtype) in cases.items():
            expected = torch._cslt_sparse_mm(packed, x_in.t(), bias=bias_in, alpha=alpha_in, out_dtype=out_dtype,
                                             transpose_result=True)
            eager = cache.matmul(packed, x_in, bias_in, alpha_in, out_dtype, 0)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                captured = cache.matmul(packed, x_in, bias_in, alpha_in, out_dtype, 0)
            graph.replay()
            torch.cuda.synchronize()
            for how, got in (("eager", eager), ("in a CUDA graph", captured)):
                if got.shape != expected.shape or not torch.allclose(got.float(), expected.float(), rtol=1e-3, atol=1e-2):
                    return f"{name} {out_features}x{in_features} at {tokens} tokens {how} differs from torch._cslt_sparse_mm"
    return None


def enable() -> str | None:
    """Route the engine's 2:4 calls through the plan cache (kernels.PLANNED_MM) once it is built and
    agrees with torch._cslt_sparse_mm; None when on, else why not (one line; nothing changed)."""
    if "reason" not in _state:
        _state["reason"] = _enable()
    return _state["reason"] or None


def _enable() -> str:
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        library = ctypes.CDLL(str(build()))
        status_text = ctypes.CDLL(mapped_cusparselt()[0]).cusparseLtGetErrorString
        status_text.restype = ctypes.c_char_p
        cache = PlanCache(library, lambda status: (status_text(status) or b"?").decode())
        wrong = mismatch(cache)
    except (PlanCacheError, OSError, RuntimeError, AttributeError) as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    if wrong:
        return wrong
    _state["cache"] = cache
    kernels.PLANNED_MM = planned_cslt_mm
    return ""


def enable_from_env() -> None:
    """enable() where TWOFOUR_PLAN_CACHE=1, saying on stderr (once) why not when it cannot."""
    if os.environ.get(ENV_VAR) != "1" or "reason" in _state:
        return
    reason = enable()
    if reason:
        print(f"{ENV_VAR}=1: plan cache off ({reason}); 2:4 calls plan on every call", file=sys.stderr)
