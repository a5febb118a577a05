"""The Linears the engine runs, behind one swap call: a config per layer says which module replaces it.

torchao style: `swap_linears(model, config_for, filter_fn)` replaces every nn.Linear that
`filter_fn(module, fqn)` accepts by the module that a registry builds from `config_for(fqn)`. Three
configs:
- SparseConfig: 2:4 on cuSPARSELt (SparseLinear), a kernel per token bucket, each dense (cuBLAS),
  fp16/bf16 2:4, or int8 2:4 with static SmoothQuant scales (where the config carries them);
- Int8ReferenceConfig: what the int8 kernel computes, in float64 on any device (Int8ReferenceLinear),
  so a CPU run scores the int8 model;
- Fp8Config: dense fp8 e4m3 through torch._scaled_mm (Fp8Linear), one of the benchmark's 8-bit dense
  models (engine/int8_dense.py registers the other, Int8DenseConfig; engine/gelu_epilogue.py the fp16
  dense Linear with the GELU epilogue, GeluEpilogueConfig).

Why not `torch.sparse.to_sparse_semi_structured`: measured on an H100 (torch 2.11, cuSPARSELt 0.8)
its default kernel config (alg_id 0) is among the slowest, the tensor subclass adds copies around
every matmul, and each cuSPARSELt call pays milliseconds of host-side planning. Here the weight is
packed once, the kernel config is chosen per shape by timing (engine/tuning.py), and a model runs as
a replayed CUDA graph (engine/graphs.py), which leaves the host work out.

int8 math: per-output-channel weight scales, one static input scale per layer after SmoothQuant's
per-input-channel smoothing, int32 accumulation. Int8ReferenceLinear computes it exactly (int32 sums
of int8 products are exact in float64), so the accuracy of the int8 model needs no GPU.

int8_gelu: where the Linear after a GELU runs int8 on an unsmoothed input (one scale for all its
channels), the Linear before the GELU may run the int8 kernel with cuSPARSELt's GELU epilogue and
an int8 output scaled by that input scale: GELU and the quantization pass then cost nothing apart.
The epilogue computes GELU's tanh form, so the activation between them (Int8PassthroughGelu) is that
form everywhere, the CPU's reference math included; it hands int8 tensors through untouched.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

Precision = Literal["fp16", "int8"]  # what a 2:4 layer's kernel computes in (fp16: the model's dtype)


INT8_GELU = "int8_gelu"  # a kernel's precision: int8 2:4 with the GELU epilogue, int8 out


class Kernel(NamedTuple):
    """A 2:4 kernel: its kind (fp16, int8, or INT8_GELU: int8 with the GELU epilogue) and its
    cuSPARSELt config (saved in plan.json as a pair). A layer's precision (LayerPlan.precision) is
    what it may run; a kernel's kind is what it runs."""

    kind: str
    alg_id: int

    @property
    def int8(self) -> bool:
        """Whether it reads int8 inputs (the layer's int8 weights and calibration)."""
        return self.kind in ("int8", INT8_GELU)


Kernels = dict[int, "Kernel | None"]  # token bucket -> 2:4 kernel, None = the dense matmul

CUSPARSELT = "cusparselt"
MIN_CAPABILITY = (8, 0)  # 2:4 sparse tensor cores: Ampere on
FP8_MIN_CAPABILITY = (8, 9)  # fp8 tensor cores: Ada and Hopper
# cuSPARSELt's dense operand needs its rows (here: tokens) to fill 16 bytes: 8 fp16 or 16 int8 values.
TOKEN_ALIGNMENT = {torch.float16: 8, torch.bfloat16: 8, torch.int8: 16}
INT8_MAX = 127
FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
# Channels whose calibration inputs or weights are all zero get no smoothing (s_j = 1).
_TINY = 1e-8


# --------------------------------------------------------------------------- which device runs what
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


def fp8_available(device: torch.device) -> bool:
    """Whether a device runs fp8 matmuls (torch._scaled_mm on fp8 tensor cores)."""
    return (device.type == "cuda" and hasattr(torch, "_scaled_mm")
            and torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY)


def shape_name(weight_shape) -> str:
    """A Linear's weight shape as kernel timings are keyed: "outxin"."""
    out_features, in_features = weight_shape
    return f"{out_features}x{in_features}"


def bucket_for(tokens: int, buckets: list[int]) -> int:
    """The smallest bucket that holds `tokens`; past the largest, the largest.
    A plain loop: torch.compile traces it without a graph break."""
    for bucket in buckets:
        if tokens <= bucket:
            return bucket
    return buckets[-1]


# --------------------------------------------------------------------------- int8 and fp8 numbers
def absmax_scales(t: torch.Tensor) -> torch.Tensor:
    """One scale per row: the row's largest |value| maps to 127. All-zero rows get scale 1."""
    amax = t.detach().abs().amax(dim=-1).float()
    return torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))


def tensor_scale(t: torch.Tensor, top: float = INT8_MAX) -> float:
    """One scale for a whole tensor: its largest |value| maps to `top` (1 for an all-zero tensor)."""
    amax = t.detach().abs().max().item()
    return amax / top if amax > 0 else 1.0


def quantize(t: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Round to nearest (ties to even, as torch.round) and clamp to [-127, 127], one scale per row."""
    return (t.float() / scales.unsqueeze(-1)).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)


def quantize_input(x: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """An activation to int8: times its per-channel multipliers, rounded and clamped (pointwise)."""
    return (x.float() * multipliers).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)


@functools.cache
def _direct_quantize() -> Callable:
    """engine/quantize_kernel.py's one-kernel quantize_input where triton is installed (CUDA builds
    of torch bring it), else quantize_input itself (same values, five kernels)."""
    try:
        from .quantize_kernel import quantize_input as one_kernel
    except ImportError:
        return quantize_input
    return one_kernel


def _eager_on_gpu(x: torch.Tensor) -> bool:
    return x.device.type == "cuda" and not torch.compiler.is_compiling()


def quantize_for_kernel(x: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """quantize_input as an int8 layer runs it. In a compiled model inductor fuses it into the op
    before; run eagerly on a GPU its five ops would each read and write the activation in float32,
    costing more than the int8 kernel saves, so there it is one Triton kernel launched directly."""
    if not _eager_on_gpu(x):
        return quantize_input(x, multipliers)
    return _direct_quantize()(x, multipliers)


def smoothing_factors(input_absmax: torch.Tensor, weight: torch.Tensor, strength: float) -> torch.Tensor:
    """SmoothQuant's s_j = max|x_j|^strength / max|w_j|^(1 - strength) per input channel j (float32)."""
    weight_absmax = weight.detach().abs().amax(dim=0).float()
    factors = input_absmax.float().clamp(min=_TINY) ** strength / weight_absmax.clamp(min=_TINY) ** (1 - strength)
    usable = (input_absmax > 0) & (weight_absmax > 0)
    return torch.where(usable, factors, torch.ones_like(factors))


class Int8Weights:
    """What an int8 layer runs on, from a float Linear, its smoothing factors and input scale."""

    def __init__(self, linear: nn.Linear, smoothing: torch.Tensor, input_scale: float):
        smoothed = linear.weight.detach().float() * smoothing.to(linear.weight.device)
        weight_scales = absmax_scales(smoothed)
        self.weight_q = quantize(smoothed, weight_scales)
        self.alpha = weight_scales * input_scale
        self.multipliers = 1.0 / (smoothing.to(linear.weight.device) * input_scale)


def reference_linear(x2d: torch.Tensor, weights: Int8Weights, bias: torch.Tensor | None) -> torch.Tensor:
    """What the int8 kernel computes for float inputs x2d (tokens, in): quantize_input, int32-exact
    accumulation, alpha, bias; float32 out."""
    acc = quantize_input(x2d, weights.multipliers).double() @ weights.weight_q.double().t()
    out = (acc * weights.alpha.double()).float()
    return out if bias is None else out + bias.float()


def gelu_quantize(y: torch.Tensor, gelu_scale: float) -> torch.Tensor:
    """What the int8_gelu kernel's epilogue does to its float result: GELU (tanh form), times
    gelu_scale, rounded and clamped to int8."""
    return quantize_input(F.gelu(y.float(), approximate="tanh"), torch.tensor(gelu_scale, device=y.device))


def to_fp8(t: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    return (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)


# --------------------------------------------------------------------------- cuSPARSELt calls
# A planned 2:4 call (engine/plan_cache.py's planned_mm: same arguments and result as _cslt_tokens_mm's
# call of torch._cslt_sparse_mm, each plan made once), passed to the calls below by a model whose
# EngineConfig asks for the plan cache; None: torch's call.
PlannedMM = Callable[..., torch.Tensor]


def _cslt_tokens_mm(packed: torch.Tensor, x2d: torch.Tensor, bias: torch.Tensor | None, alg_id: int,
                    alpha: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
                    gelu_scale: float | None = None, planned: PlannedMM | None = None) -> torch.Tensor:
    """torch._cslt_sparse_mm (or `planned`) on a (tokens, in) input, (tokens, out) out: tokens padded to the
    kernel's alignment and cut back after.

    cuSPARSELt computes W @ x2d.t(); x2d.t() of a row-major x2d is column-major, which it reads in
    place, and transpose_result hands back the (tokens, out) row-major result: no transposed copies.
    With transpose_result each fp16 call plans on the host, far longer than the matmul takes on the
    GPU, so this is for CUDA-graph replay, where the host work is gone, or for the plan cache
    (`planned`), which plans once per shape; without it, every consumer would need a transposing copy
    of the output. gelu_scale (the GELU epilogue) only
    through the plan cache: torch's call has no activation argument.
    """
    tokens = x2d.shape[0]
    pad = -tokens % TOKEN_ALIGNMENT[x2d.dtype]
    if pad:
        x2d = F.pad(x2d, (0, 0, 0, pad))
    if planned is not None:
        out = planned(packed, x2d, bias, alpha, out_dtype, alg_id, gelu_scale)
    else:
        out = torch._cslt_sparse_mm(packed, x2d.t(), bias=bias, alpha=alpha, out_dtype=out_dtype,
                                    transpose_result=True, alg_id=alg_id)
    return out[:tokens] if pad else out


def sparse_mm(packed: torch.Tensor, x2d: torch.Tensor, bias: torch.Tensor | None, alg_id: int,
              planned: PlannedMM | None = None) -> torch.Tensor:
    """x2d @ W.t() + bias with W packed by torch._cslt_compress."""
    return _cslt_tokens_mm(packed, x2d, bias, alg_id, planned=planned)


def gelu_sparse_mm(packed: torch.Tensor, x2d: torch.Tensor, bias: torch.Tensor | None, alg_id: int,
                   planned: PlannedMM) -> torch.Tensor:
    """GELU (tanh form) of sparse_mm, in cuSPARSELt's epilogue: through the plan cache only."""
    return _cslt_tokens_mm(packed, x2d, bias, alg_id, gelu_scale=1.0, planned=planned)


def int8_sparse_mm(packed: torch.Tensor, x_q: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor,
                   alg_id: int, planned: PlannedMM | None = None) -> torch.Tensor:
    """(x_q @ W_q.t()) * alpha + bias for int8 x_q (tokens, in) and an int8 2:4 W_q packed by
    torch._cslt_compress: int32 accumulation, the per-output-channel alpha (input scale x weight
    scale) and the bias applied by the kernel, out in the bias's dtype (fp16: no pass after it)."""
    return _cslt_tokens_mm(packed, x_q, bias, alg_id, alpha=alpha, out_dtype=bias.dtype, planned=planned)


def int8_gelu_sparse_mm(packed: torch.Tensor, x_q: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor,
                        bias_float32: torch.Tensor, alg_id: int, gelu_scale: float,
                        planned: PlannedMM | None = None) -> torch.Tensor:
    """gelu_quantize(int8_sparse_mm(...), gelu_scale), int8 out: in the kernel's epilogue through the
    plan cache (an int8 output takes its bias in float32), else as two steps (torch's call has no
    activation argument)."""
    if planned is None:
        return gelu_quantize(int8_sparse_mm(packed, x_q, alpha, bias, alg_id), gelu_scale)
    return _cslt_tokens_mm(packed, x_q, bias_float32, alg_id, alpha=alpha, out_dtype=torch.int8,
                           gelu_scale=gelu_scale, planned=planned)


# --------------------------------------------------------------------------- the Linears
class SparseLinear(nn.Module):
    """An inference Linear that runs, per token bucket, the kernel that measured fastest there: the
    dense matmul, fp16 2:4 or int8 2:4 (cuSPARSELt), as `kernels` says.

    int8 (where `int8` weights are given): static smoothing and scales, so quantizing the input is
    one pointwise op, which torch.compile fuses into the op before, and the kernel's fp16 output
    (alpha and bias applied inside) is final. Only what some bucket runs is kept (the dense weight,
    the packed fp16 and int8 weights); `keep_all` keeps everything, so that set_kernels may later
    choose any kernel (the planner times whole-model variants on one model that way).

    gelu_scale (an int8 layer whose output goes through GELU into an int8 layer with an unsmoothed
    input): 1 / that layer's input scale, for the int8_gelu kernel, whose int8 output the next layer
    takes as its quantized input.

    planned: the plan cache's 2:4 call where the model's EngineConfig asks for it (None: torch's).
    """

    def __init__(self, linear: nn.Linear, kernels: Kernels, keep_all: bool = False,
                 int8: Int8Weights | None = None, gelu_scale: float | None = None,
                 planned: PlannedMM | None = None):
        super().__init__()
        self.planned = planned
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.set_kernels(kernels)
        weight = linear.weight.detach()
        runs = {None if kernel is None else "int8" if kernel.int8 else "fp16" for kernel in self.kernels.values()}
        self.register_buffer("weight", weight if keep_all or None in runs else None)
        self.register_buffer("packed", torch._cslt_compress(weight) if keep_all or "fp16" in runs else None)
        bias = linear.bias
        if int8 is not None and bias is None:  # the int8 kernel's output dtype is its bias's
            bias = torch.zeros(self.out_features, dtype=weight.dtype, device=weight.device)
        self.register_buffer("bias", None if bias is None else bias.detach())
        keep_int8 = int8 is not None and (keep_all or "int8" in runs)
        self.register_buffer("packed_int8", torch._cslt_compress(int8.weight_q) if keep_int8 else None)
        self.register_buffer("alpha", int8.alpha if keep_int8 else None)
        self.register_buffer("multipliers", int8.multipliers if keep_int8 else None)
        self.gelu_scale = gelu_scale if keep_int8 else None
        self.register_buffer("bias_float32", self.bias.float() if self.gelu_scale is not None else None)

    def set_kernels(self, kernels: Kernels) -> None:
        self.kernels = dict(kernels)
        self.buckets = sorted(self.kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.numel() // self.in_features
        kernel = self.kernels[bucket_for(tokens, self.buckets)]
        quantized = x.dtype == torch.int8  # by the int8_gelu kernel of the layer before
        if quantized and (kernel is None or kernel.kind != "int8"):
            raise RuntimeError(f"{self.extra_repr()}: an int8 input at {tokens} tokens, where this layer "
                               f"runs {kernel}: the layer before may run int8_gelu only where this one runs int8")
        if kernel is None:  # as nn.Linear: no reshapes, whose host work an eager small batch would feel
            return F.linear(x, self.weight, self.bias)
        x2d = x.reshape(-1, self.in_features).contiguous()
        if kernel.kind == INT8_GELU:
            out = int8_gelu_sparse_mm(self.packed_int8, quantize_for_kernel(x2d, self.multipliers), self.alpha,
                                      self.bias, self.bias_float32, kernel.alg_id, self.gelu_scale, self.planned)
        elif kernel.kind == "int8":
            x_q = x2d if quantized else quantize_for_kernel(x2d, self.multipliers)
            out = int8_sparse_mm(self.packed_int8, x_q, self.alpha, self.bias, kernel.alg_id, self.planned)
        else:
            out = sparse_mm(self.packed, x2d, self.bias, kernel.alg_id, self.planned)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernels={self.kernels}"


class Int8PassthroughGelu(nn.Module):
    """The activation between an int8_gelu layer and the int8 layer after it: GELU's tanh form (what
    the kernel's epilogue computes) on float inputs; an int8 input is that layer's output, GELU'd and
    quantized already, and passes through."""

    replaces_gelu = True  # adapters.gelu_pairs still finds the pair in a planned model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.dtype == torch.int8 else F.gelu(x, approximate="tanh")


class Int8ReferenceLinear(nn.Module):
    """A Linear that computes what the int8 2:4 kernel computes, on any device (reference_linear):
    where no int8 kernel runs, the pipeline still scores the int8 model's accuracy."""

    def __init__(self, linear: nn.Linear, smoothing: torch.Tensor, input_scale: float):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weights = Int8Weights(linear, smoothing, input_scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = reference_linear(x.reshape(-1, self.in_features), self.weights, self.bias)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


class Fp8Linear(nn.Module):
    """x @ W.t() + bias with x and W in fp8, per-tensor scales, fast accumulation, fp16 out.

    On Hopper, fp8 runs the dense tensor cores at twice the fp16 rate, so it is the dense model to
    beat besides fp16, at its fastest: with fast accumulation (use_fast_accum, as fp8 inference
    serves it), and the bias applied by the matmul. Speed only: its accuracy is not scored.
    """

    def __init__(self, linear: nn.Linear, input_scale: float):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, device = linear.weight.detach(), linear.weight.device
        weight_scale = tensor_scale(weight, FP8_MAX)
        # torch._scaled_mm takes its second operand column-major: W.t() of a row-major W is.
        self.register_buffer("weight_t", to_fp8(weight, weight_scale).t())
        self.register_buffer("weight_scale", torch.tensor(weight_scale, device=device))
        self.register_buffer("input_scale", torch.tensor(input_scale, device=device))
        bias = linear.bias.detach() if linear.bias is not None else torch.zeros(self.out_features, device=device)
        self.register_buffer("bias", bias.to(torch.float16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2d = x.reshape(-1, self.in_features)
        out = torch._scaled_mm(to_fp8(x2d, self.input_scale), self.weight_t, scale_a=self.input_scale,
                               scale_b=self.weight_scale, bias=self.bias, out_dtype=torch.float16,
                               use_fast_accum=True)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


# --------------------------------------------------------------------------- configs and the swap
@dataclass(frozen=True)
class SparseConfig:
    kernels: Kernels
    keep_all: bool = False
    # int8 kernels: the layer's calibration (both None where it may not run int8)
    smoothing: torch.Tensor | None = field(default=None, repr=False)
    input_scale: float | None = None
    gelu_scale: float | None = None  # where the int8_gelu kernel may run (SparseLinear)
    planned: PlannedMM | None = field(default=None, repr=False)  # the plan cache's call (SparseLinear)


@dataclass(frozen=True)
class Int8ReferenceConfig:
    smoothing: torch.Tensor = field(repr=False)
    input_scale: float


@dataclass(frozen=True)
class Fp8Config:
    input_scale: float


LinearConfig = SparseConfig | Int8ReferenceConfig | Fp8Config
FilterFn = Callable[[nn.Module, str], bool]

MODULE_FOR_CONFIG: dict[type, Callable[[nn.Linear, LinearConfig], nn.Module]] = {
    SparseConfig: lambda linear, c: SparseLinear(
        linear, c.kernels, c.keep_all, None if c.smoothing is None else Int8Weights(linear, c.smoothing, c.input_scale),
        c.gelu_scale, c.planned),
    Int8ReferenceConfig: lambda linear, c: Int8ReferenceLinear(linear, c.smoothing, c.input_scale),
    Fp8Config: lambda linear, c: Fp8Linear(linear, c.input_scale),
}


def named(names) -> FilterFn:
    """A filter_fn that accepts the Linears with these full names."""
    names = set(names)
    return lambda module, fqn: fqn in names


def swap_linears(model: nn.Module, config_for: Callable[[str], LinearConfig], filter_fn: FilterFn) -> nn.Module:
    """Replace (in place) every nn.Linear that filter_fn(module, fqn) accepts by the module
    MODULE_FOR_CONFIG builds from config_for(fqn)."""
    swapped = []
    for fqn, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and filter_fn(module, fqn):
            config = config_for(fqn)
            replacement = MODULE_FOR_CONFIG[type(config)](module, config)
            model.set_submodule(fqn, replacement)
            swapped.append(replacement)
    _share_multipliers([m for m in swapped if isinstance(m, SparseLinear) and m.multipliers is not None])
    return model


def _share_multipliers(modules: list[SparseLinear]) -> None:
    """Layers calibrated together (same smoothing and scale) share one multipliers tensor, so the
    compiled kernel before them reads it once (torch 2.11's inductor still writes one int8 copy each)."""
    shared: dict[bytes, torch.Tensor] = {}
    for module in modules:
        module.multipliers = shared.setdefault(module.multipliers.cpu().numpy().tobytes(), module.multipliers)
