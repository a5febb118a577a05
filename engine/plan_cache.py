"""2:4 calls without per-call host planning: each cuSPARSELt matmul plan made once and kept.

torch._cslt_sparse_mm makes its descriptors and plan on every call; with transpose_result (what the
engine needs for a row-major result) an fp16 call spends far longer on that host work than on the
matmul, in every cuSPARSELt version measured, so an fp16 2:4 model run eagerly is dominated by it,
every CUDA graph capture pays it per layer, and every kernel config timed pays it several times. cslt_plans.c
makes the same descriptors and plan once per (weight shape, token count, kernel config, bias) and
runs it; PlanCache keeps them, torch's allocator and stream stay in charge of memory and ordering.

Optional: a model whose EngineConfig.plan_cache asks for it (default: TWOFOUR_PLAN_CACHE=1) gets
planned_mm from planned_matmul(config), and its SparseLinears call it; models built without it keep
torch's call in the same process. The library is built and loaded once per process. The C file is
compiled on first use (the C compiler, cusparseLt.h, and the CUDA headers it includes;
TWOFOUR_CUSPARSELT_INCLUDE may name cusparseLt.h's folder) against the cuSPARSELt this process
loaded, and checked against torch._cslt_sparse_mm (fp16 and int8, eager and inside a CUDA graph)
before any 2:4 call goes through it. Anything missing or any mismatch leaves the model on
torch._cslt_sparse_mm and says why in one line.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable

import torch

from .config import EngineConfig
from .runtime import loaded_version, mapped_cusparselt
from .native import attempt, cache_folder, compile_library, enable_once, load

INCLUDE_ENV = "TWOFOUR_CUSPARSELT_INCLUDE"
SOURCE = Path(__file__).with_name("cslt_plans.c")
DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.int8: 2}  # cslt_plans.c's TWOFOUR_FP16, ...
# torch._cslt_compress allocates numel * factor / 16 elements: the weight's out_features come back from it.
COMPRESSION_FACTOR = {torch.float16: 9, torch.bfloat16: 9, torch.int8: 10}
_ONE = ctypes.c_float(1.0)  # alpha where no per-row vector is given
_state: dict = {}  # the process's library, loaded once: "reason" why it is unusable ("" once on), "cache": the PlanCache


class PlanCacheError(RuntimeError):
    """The plan cache cannot be built or used here; the message is one line saying why."""


def include_candidates() -> list[Path]:
    """Folders that may hold cusparseLt.h and the CUDA headers: TWOFOUR_CUSPARSELT_INCLUDE, the include
    folder beside each cuSPARSELt loaded (and the library's own folder), the CUDA toolkit's, and those of
    the nvidia wheels installed beside a loaded cuSPARSELt wheel (nvidia/cusparselt/include for 0.8,
    nvidia/cu13/include for 0.10 and CUDA 13, nvidia/cuda_runtime/include). Never a folder found from
    the current directory: headers planted there would be compiled into the process."""
    nvcc = shutil.which("nvcc")
    toolkits = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), nvcc and Path(nvcc).resolve().parent.parent,
                "/usr/local/cuda"]
    found = [os.environ.get(INCLUDE_ENV)]
    wheels = []
    for path in map(Path, mapped_cusparselt()):
        found += [path.parent.parent / "include", path.parent / "include", path.parent]
        if path.parent.parent.parent.name == "nvidia":  # .../nvidia/<wheel>/lib/<library>
            wheels += sorted(path.parent.parent.parent.glob("*/include"))
    found += [Path(toolkit) / "include" for toolkit in toolkits if toolkit]
    found += wheels
    return list(dict.fromkeys(Path(folder) for folder in found if folder))


def first_holding(header: str, folders: list[Path]) -> Path | None:
    return next((folder for folder in folders if (folder / header).is_file()), None)


def header_version(folder: Path) -> str | None:
    """The version ("0.10.0") of the cusparseLt.h in `folder`, from its CUSPARSELT_VER_* lines."""
    try:
        text = (folder / "cusparseLt.h").read_text(errors="replace")
    except OSError:
        return None
    parts = [re.search(rf"#define\s+CUSPARSELT_VER_{name}\s+(\d+)", text) for name in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(part.group(1) for part in parts) if all(parts) else None


def choose_header(folders: list[Path]) -> Path | None:
    """The first folder whose cusparseLt.h has the version of the cuSPARSELt torch's calls run on
    (runtime.loaded_version), else the first holding one (the descriptors' layout and the enum values
    used are the same from 0.8 to 0.10)."""
    holding = [folder for folder in folders if (folder / "cusparseLt.h").is_file()]
    wanted = loaded_version()
    return next((folder for folder in holding if wanted and header_version(folder) == wanted),
                holding[0] if holding else None)


# Searched last: cusparseLt.h 0.8 includes <cstddef> (C++ only; 0.10 includes <stddef.h>), and "cusparse.h"
# for three enums, which no folder may hold (0.10 falls back to its own stub): cuSPARSE's values of those.
SHIM = {"cstddef": "#include <stddef.h>\n",
        "cusparse.h": "#ifndef CUSPARSE_H_\n#define CUSPARSE_H_\n"
                      "typedef enum { CUSPARSE_STATUS_SUCCESS = 0, CUSPARSE_STATUS_NOT_INITIALIZED = 1,\n"
                      "  CUSPARSE_STATUS_ALLOC_FAILED = 2, CUSPARSE_STATUS_INVALID_VALUE = 3,\n"
                      "  CUSPARSE_STATUS_ARCH_MISMATCH = 4,\n"
                      "  CUSPARSE_STATUS_MAPPING_ERROR = 5, CUSPARSE_STATUS_EXECUTION_FAILED = 6,\n"
                      "  CUSPARSE_STATUS_INTERNAL_ERROR = 7, CUSPARSE_STATUS_MATRIX_TYPE_NOT_SUPPORTED = 8,\n"
                      "  CUSPARSE_STATUS_ZERO_PIVOT = 9, CUSPARSE_STATUS_NOT_SUPPORTED = 10,\n"
                      "  CUSPARSE_STATUS_INSUFFICIENT_RESOURCES = 11 } cusparseStatus_t;\n"
                      "typedef enum { CUSPARSE_OPERATION_NON_TRANSPOSE = 0, CUSPARSE_OPERATION_TRANSPOSE = 1 } "
                      "cusparseOperation_t;\n"
                      "typedef enum { CUSPARSE_ORDER_COL = 1, CUSPARSE_ORDER_ROW = 2 } cusparseOrder_t;\n#endif\n"}


def build(cache_dir: Path | None = None) -> Path:
    """cslt_plans.c compiled against the cuSPARSELt this process runs (reused while the source, the
    library and the header stay the same); PlanCacheError says what is missing. The compiler's command
    and whole output are kept in cslt_plans-<key>.log beside the library (in the cache folder)."""
    libraries = mapped_cusparselt()
    if not libraries:
        raise PlanCacheError("no cuSPARSELt loaded in this process (a CUDA build of torch loads one)")
    folders = include_candidates()
    header = choose_header(folders)
    cuda_headers = first_holding("driver_types.h", folders)
    if header is None:
        raise PlanCacheError(f"cusparseLt.h not found: set {INCLUDE_ENV} to the folder that holds it "
                             "(the nvidia-cusparselt wheel's include/)")
    if cuda_headers is None:
        raise PlanCacheError("the CUDA headers (driver_types.h) not found: install the CUDA toolkit or set CUDA_HOME")
    # What those headers include in turn (CUDA 13 wheels split crt/ off; cusparseLt.h 0.8 needs cusparse.h).
    extra = [first_holding(name, folders) for name in ("library_types.h", "crt/host_defines.h", "cusparse.h")]
    includes = list(dict.fromkeys([header, cuda_headers, *(folder for folder in extra if folder)]))
    cache_dir = cache_dir or cache_folder()
    shim = cache_dir / "c-shim"
    shim.mkdir(parents=True, exist_ok=True)
    for name, text in SHIM.items():
        if not (shim / name).is_file() or (shim / name).read_text() != text:
            (shim / name).write_text(text)
    return compile_library(SOURCE, [*includes, shim], libraries[0], list(SHIM.values()), PlanCacheError, cache_dir)


class PlanCache:
    """torch._cslt_sparse_mm(packed, x2d.t(), transpose_result=True, ...) with each plan made once."""

    def __init__(self, library: ctypes.CDLL, status_text):
        self.library, self.status_text = library, status_text
        library.twofour_plan_init.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                                              ctypes.c_int, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32,
                                              ctypes.POINTER(ctypes.c_float), ctypes.POINTER(ctypes.c_void_p),
                                              ctypes.POINTER(ctypes.c_size_t)]
        library.twofour_matmul.argtypes = [ctypes.c_void_p] * 7
        self.plans: dict[tuple, tuple[ctypes.c_void_p, int]] = {}

    def check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"cuSPARSELt {what}: {self.status_text(status)} (status {status})")

    def plan(self, key: tuple, bias: torch.Tensor | None, alpha_vector: bool,
             gelu_scale: float | None = None) -> tuple[ctypes.c_void_p, int]:
        m, n, k, dtype, out_dtype, alg_id = key[:6]
        entry, workspace = ctypes.c_void_p(), ctypes.c_size_t()
        scaling = None if gelu_scale is None else ctypes.byref(ctypes.c_float(gelu_scale))
        self.check(self.library.twofour_plan_init(m, n, k, DTYPE_CODES[dtype], DTYPE_CODES[out_dtype], alg_id,
                                                  None if bias is None else bias.data_ptr(), int(alpha_vector),
                                                  scaling, ctypes.byref(entry), ctypes.byref(workspace)), "plan")
        return entry, workspace.value

    def matmul(self, packed: torch.Tensor, x2d: torch.Tensor, bias: torch.Tensor | None, alpha: torch.Tensor | None,
               out_dtype: torch.dtype | None, alg_id: int, gelu_scale: float | None = None) -> torch.Tensor:
        """(tokens, out) = x2d @ W.t() (* alpha) (+ bias) for a contiguous (tokens, in) x2d and W packed by
        torch._cslt_compress, then, with gelu_scale, gelu(that) * gelu_scale (int8 out: rounded and saturated
        by the kernel); the plan for this shape, kernel, bias and scale made on the first call."""
        x2d = x2d.contiguous()  # the plan reads it row-major; a compiled graph may hand over other strides
        tokens, in_features = x2d.shape
        out_features = packed.numel() * 16 // COMPRESSION_FACTOR[packed.dtype] // in_features
        out_dtype = out_dtype or x2d.dtype
        key = (out_features, tokens, in_features, x2d.dtype, out_dtype, alg_id,
               None if bias is None else bias.data_ptr(), alpha is not None, gelu_scale, x2d.device.index)
        if key not in self.plans:
            self.plans[key] = self.plan(key, bias, alpha is not None, gelu_scale)
        entry, workspace_bytes = self.plans[key]
        out = torch.empty((tokens, out_features), dtype=out_dtype, device=x2d.device)
        workspace = torch.empty(workspace_bytes, dtype=torch.uint8, device=x2d.device) if workspace_bytes else None
        alpha_pointer = alpha.data_ptr() if alpha is not None else ctypes.addressof(_ONE)
        self.check(self.library.twofour_matmul(entry, alpha_pointer, packed.data_ptr(), x2d.data_ptr(), out.data_ptr(),
                                               workspace.data_ptr() if workspace is not None else None,
                                               current_stream(x2d.device.index)), "matmul")
        return out


def current_stream(device_index: int) -> int:
    """The handle of torch's current CUDA stream on a device (what torch.cuda.current_stream().cuda_stream
    gives, without building a Stream object at every call)."""
    return torch._C._cuda_getCurrentRawStream(device_index)


def planned_mm(packed: torch.Tensor, x2d: torch.Tensor, bias: torch.Tensor | None, alpha: torch.Tensor | None,
               out_dtype: torch.dtype | None, alg_id: int, gelu_scale: float | None = None) -> torch.Tensor:
    """The planned 2:4 call (kernels.PlannedMM) of models built with the plan cache: while torch.compile
    traces, the custom op it keeps whole; otherwise PlanCache.matmul itself, since an eager call through the op's dispatcher
    costs more host time than the matmul's own."""
    if torch.compiler.is_compiling():
        return planned_cslt_mm(packed, x2d, bias, alpha, out_dtype, alg_id, gelu_scale)
    return _state["cache"].matmul(packed, x2d, bias, alpha, out_dtype, alg_id, gelu_scale)


@torch.library.custom_op("twofour::planned_cslt_mm", mutates_args=())
def planned_cslt_mm(packed: torch.Tensor, x2d: torch.Tensor, bias: torch.Tensor | None, alpha: torch.Tensor | None,
                    out_dtype: torch.dtype | None, alg_id: int, gelu_scale: float | None = None) -> torch.Tensor:
    """PlanCache.matmul as one op torch.compile keeps whole (it cannot trace a ctypes call)."""
    return _state["cache"].matmul(packed, x2d, bias, alpha, out_dtype, alg_id, gelu_scale)


@planned_cslt_mm.register_fake
def _(packed, x2d, bias, alpha, out_dtype, alg_id, gelu_scale=None):
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
    """Build and load the plan cache (once per process) and check it against torch._cslt_sparse_mm;
    None when usable, else why not (one line)."""
    return enable_once(_state, _enable)


def _enable() -> str:
    return attempt(_state, "cache", lambda: PlanCache(*load(build(), mapped_cusparselt()[0], "cusparseLtGetErrorString")),
                   mismatch)


def planned_matmul(config: EngineConfig) -> Callable | None:
    """The 2:4 call for a model built under `config`: planned_mm where it asks for the plan cache and
    the cache works here, else None (torch's call), saying on stderr (once per process) why not."""
    if not config.plan_cache:
        return None
    first_try = "reason" not in _state
    reason = enable()
    if reason and first_try:
        print(f"plan cache asked for but off ({reason}); 2:4 calls plan on every call", file=sys.stderr)
    return None if reason else planned_mm
