"""fp8 dense Linears with cuBLASLt's epilogue: the benchmark's 8-bit dense model given the fusion the int8
2:4 model has (int8_gelu: GELU and the next layer's quantization in the matmul).

torch._scaled_mm, which kernels.Fp8Linear calls, adds a bias but applies no activation and writes no fp8,
so compiled, each FFN-in Linear is followed by GELU and the cast to fp8 of the FFN-out Linear's input:
kernels that read and write the whole FFN activation. cublaslt_fp8.c calls cuBLASLt itself: the FFN-in
Linear applies bias and GELU (tanh form) in its epilogue and writes e4m3 at the FFN-out Linear's input
scale, which the FFN-out Linear reads as it is. fp8_epilogue_model swaps each GELU pair's two Fp8Linears.

The library is built on first use (native.compile_library: a C++ compiler and cublasLt.h, the CUDA
toolkit's or the nvidia wheel's beside the cuBLASLt torch loaded; TWOFOUR_CUBLASLT_INCLUDE may name its
folder) against the cuBLASLt this process loaded, and checked against the same math in float32, eager
and inside a CUDA graph, before any model uses it. Anything missing or a mismatch raises
Fp8EpilogueError with one line saying why. Speed only: its accuracy is not scored.
"""
from __future__ import annotations

import copy
import ctypes
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import gelu_pairs
from .common import relative_error
from .gelu_epilogue import AppliedGelu
from .kernels import FP8, FP8_MAX, Fp8Linear, to_fp8
from .native import attempt, compile_library, enable_once, load
from .plan import replace_gelu_activations
from .plan_cache import current_stream, first_holding, include_candidates
from .runtime import mapped_libraries

INCLUDE_ENV = "TWOFOUR_CUBLASLT_INCLUDE"
SOURCE = Path(__file__).with_name("cublaslt_fp8.c")
MAX_WORKSPACE = 32 << 20  # cuBLASLt's suggestion for Hopper
# The library's outputs against float32 math: fast accumulation, and an fp8 output one rounding apart.
MAX_ERROR = {torch.float16: 1e-2, FP8: 3e-2}
_state: dict = {}  # the process's library: "reason" why it is unusable ("" once on), "plans": the Fp8Plans


class Fp8EpilogueError(RuntimeError):
    """The fp8 epilogue cannot be built or used here; the message is one line saying why."""


def build(cache_dir: Path | None = None) -> Path:
    """cublaslt_fp8.c compiled against the cuBLASLt this process loaded (native.compile_library)."""
    libraries = mapped_libraries("libcublasLt")
    if not libraries:
        raise Fp8EpilogueError("no cuBLASLt loaded in this process (a CUDA build of torch loads one at its first matmul)")
    beside = [Path(library).parent.parent / "include" for library in libraries]  # .../nvidia/cu13/{lib,include}
    folders = list(dict.fromkeys(Path(folder) for folder in [os.environ.get(INCLUDE_ENV), *beside, *include_candidates()]
                                 if folder))
    header = first_holding("cublasLt.h", folders)
    if header is None:
        raise Fp8EpilogueError(f"cublasLt.h not found: set {INCLUDE_ENV} to the folder that holds it (the CUDA "
                               "toolkit's include/, or the nvidia cuBLAS wheel's)")
    needed = ("driver_types.h", "library_types.h", "cuda_fp16.h", "crt/host_defines.h")
    chosen = [header, *(folder for name in needed if (folder := first_holding(name, folders)))]
    # then every other candidate, for what those headers include in turn wherever a layout puts it
    includes = list(dict.fromkeys([*chosen, *(folder for folder in folders if folder.is_dir())]))
    return compile_library(SOURCE, includes, libraries[0], [], Fp8EpilogueError, cache_dir, cplusplus=True)


def reference(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
              out_scale_inverse: torch.Tensor | None, gelu: bool) -> torch.Tensor:
    """What the library computes, in float32 torch: (x * x_scale) @ (W * w_scale).t() + bias, GELU (tanh)
    where gelu, then fp8 at out_scale_inverse where given, else fp16."""
    out = (x.float() * x_scale) @ (weight.float() * w_scale).t() + bias.float()
    if gelu:
        out = F.gelu(out, approximate="tanh")
    if out_scale_inverse is None:
        return out.to(torch.float16)
    return (out * out_scale_inverse).clamp(-FP8_MAX, FP8_MAX).to(FP8)


class Fp8Plans:
    """cuBLASLt fp8 matmuls with their epilogue, each plan (descriptors and algorithm) made once."""

    def __init__(self, library: ctypes.CDLL, status_text):
        self.library, self.status_text = library, status_text
        library.twofour_fp8_plan_init.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_int32] * 2 + [ctypes.c_void_p] * 4 + [
            ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_size_t)]
        library.twofour_fp8_matmul.argtypes = [ctypes.c_void_p] * 6
        self.plans: dict[tuple, tuple[ctypes.c_void_p, int]] = {}

    def check(self, status: int, what: str) -> None:
        if status != 0:
            raise Fp8EpilogueError(f"cuBLASLt {what}: {self.status_text(status)} (status {status})")

    def matmul(self, weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, x_scale: torch.Tensor,
               w_scale: torch.Tensor, out_scale_inverse: torch.Tensor | None, gelu: bool) -> torch.Tensor:
        """reference(...) for a (tokens, in) fp8 x and an (out, in) fp8 weight, on the current stream. The
        scales and the bias are read through their addresses at every call: they must outlive the plan."""
        x = x.contiguous()
        (tokens, in_features), out_features = x.shape, weight.shape[0]
        pointers = [tensor.data_ptr() if tensor is not None else None for tensor in (x_scale, w_scale, out_scale_inverse, bias)]
        key = (out_features, tokens, in_features, gelu, *pointers, x.device.index)
        if key not in self.plans:
            entry, workspace = ctypes.c_void_p(), ctypes.c_size_t()
            self.check(self.library.twofour_fp8_plan_init(out_features, tokens, in_features, int(gelu),
                                                          int(out_scale_inverse is not None), *pointers, MAX_WORKSPACE,
                                                          ctypes.byref(entry), ctypes.byref(workspace)), "plan")
            self.plans[key] = entry, workspace.value
        entry, workspace_bytes = self.plans[key]
        out = torch.empty((tokens, out_features), dtype=torch.float16 if out_scale_inverse is None else FP8,
                          device=x.device)
        workspace = torch.empty(max(workspace_bytes, 1), dtype=torch.uint8, device=x.device)
        self.check(self.library.twofour_fp8_matmul(entry, weight.data_ptr(), x.data_ptr(), out.data_ptr(),
                                                   workspace.data_ptr(), current_stream(x.device.index)), "matmul")
        return out


@torch.library.custom_op("twofour::fp8_epilogue_mm", mutates_args=())
def fp8_epilogue_mm(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor, x_scale: torch.Tensor,
                    w_scale: torch.Tensor, out_scale_inverse: torch.Tensor | None, gelu: bool) -> torch.Tensor:
    """Fp8Plans.matmul on a GPU (one op torch.compile keeps whole: it cannot trace a ctypes call); the
    reference math elsewhere."""
    if x.is_cuda:
        return plans().matmul(weight, x, bias, x_scale, w_scale, out_scale_inverse, gelu)
    return reference(weight, x, bias, x_scale, w_scale, out_scale_inverse, gelu)


@fp8_epilogue_mm.register_fake
def _(weight, x, bias, x_scale, w_scale, out_scale_inverse, gelu):
    return x.new_empty((x.shape[0], weight.shape[0]), dtype=torch.float16 if out_scale_inverse is None else FP8)


def mismatch(fp8_plans: Fp8Plans) -> str | None:
    """Where the library differs from reference() on this GPU (the FFN-in call: GELU, fp8 out; the
    FFN-out call: bias, fp16 out; eager and replayed from a CUDA graph), or None when they agree."""
    generator = torch.Generator(device="cuda").manual_seed(0)
    out_features, in_features, tokens = 3072, 768, 112
    weight = torch.randn(out_features, in_features, device="cuda", generator=generator).to(FP8)
    x = torch.randn(tokens, in_features, device="cuda", generator=generator).to(FP8)
    bias = torch.randn(out_features, device="cuda", generator=generator).half()
    x_scale, w_scale = torch.tensor(0.05, device="cuda"), torch.tensor(0.02, device="cuda")
    for name, out_scale_inverse, gelu in (("GELU, fp8 out", torch.tensor(4.0, device="cuda"), True),
                                          ("bias, fp16 out", None, False)):
        expected = reference(weight, x, bias, x_scale, w_scale, out_scale_inverse, gelu)
        eager = fp8_plans.matmul(weight, x, bias, x_scale, w_scale, out_scale_inverse, gelu)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = fp8_plans.matmul(weight, x, bias, x_scale, w_scale, out_scale_inverse, gelu)
        graph.replay()
        torch.cuda.synchronize()
        for how, got in (("eager", eager), ("in a CUDA graph", captured)):
            if got.dtype != expected.dtype or got.shape != expected.shape:
                return f"{name} {how}: {got.dtype} {tuple(got.shape)} out, not {expected.dtype} {tuple(expected.shape)}"
            error = relative_error(expected.float(), got.float())
            if error > MAX_ERROR[got.dtype]:
                return f"{name} {how}: relative error {error:.2e} against float32 math (> {MAX_ERROR[got.dtype]})"
    return None


def enable() -> str | None:
    """Build and load the library (once per process) and check it; None when usable, else why not."""
    return enable_once(_state, _enable)


def _enable() -> str:
    def make() -> Fp8Plans:
        # torch loads cuBLASLt at its first matmul
        torch.ones(16, 16, device="cuda", dtype=torch.float16) @ torch.ones(16, 16, device="cuda", dtype=torch.float16)
        return Fp8Plans(*load(build(), mapped_libraries("libcublasLt")[0], "cublasLtGetStatusString"))

    return attempt(_state, "plans", make, mismatch)


def plans() -> Fp8Plans:
    reason = enable()
    if reason:
        raise Fp8EpilogueError(f"the fp8 epilogue is off: {reason}")
    return _state["plans"]


class Fp8EpilogueLinear(nn.Module):
    """An Fp8Linear through cuBLASLt with its epilogue: GELU after the bias where `gelu`, and the output in
    fp8 at `out_scale` (the next Fp8Linear's input scale) where given; an fp8 input is read as it is (the
    previous layer quantized it at this layer's input scale)."""

    def __init__(self, fp8: Fp8Linear, gelu: bool, out_scale: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features, self.gelu = fp8.in_features, fp8.out_features, gelu
        self.register_buffer("weight", fp8.weight_t.t().contiguous())  # (out, in), row-major
        self.register_buffer("weight_scale", fp8.weight_scale.float())
        self.register_buffer("input_scale", fp8.input_scale.float())
        self.register_buffer("bias", fp8.bias)
        self.register_buffer("out_scale_inverse", None if out_scale is None else (1 / out_scale).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2d = x.reshape(-1, self.in_features)
        x_q = x2d if x2d.dtype == FP8 else to_fp8(x2d, self.input_scale)
        out = fp8_epilogue_mm(self.weight, x_q, self.bias, self.input_scale, self.weight_scale, self.out_scale_inverse,
                              self.gelu)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        out = "fp8" if self.out_scale_inverse is not None else "fp16"
        return f"in_features={self.in_features}, out_features={self.out_features}, gelu={self.gelu}, out={out}"


def fp8_epilogue_model(model: nn.Module) -> nn.Module:
    """A copy of an fp8 dense model (Fp8Linears) whose GELU pairs run through cuBLASLt with the epilogue:
    the first Linear with GELU and fp8 out, the GELU after it a pass-through, the second reading fp8.
    Pairs whose Linears are not both Fp8Linear stay as they are."""
    model = copy.deepcopy(model)
    firsts = []
    for first, second in gelu_pairs(model).items():
        producer, consumer = model.get_submodule(first), model.get_submodule(second)
        if not (isinstance(producer, Fp8Linear) and isinstance(consumer, Fp8Linear)):
            continue
        model.set_submodule(first, Fp8EpilogueLinear(producer, gelu=True, out_scale=consumer.input_scale))
        model.set_submodule(second, Fp8EpilogueLinear(consumer, gelu=False))
        firsts.append(first)
    replace_gelu_activations(model, firsts, AppliedGelu)
    return model
