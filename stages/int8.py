"""int8 x 2:4: the quantization math, and which layers can take int8 without hurting accuracy.

Symmetric int8 in [-127, 127] (no -128, so negating a value never overflows): weights get one
scale per output channel, activations one static scale per layer, calibrated on a calibration
batch (its largest |input| maps to 127; larger inputs later clamp). The int8 matmul accumulates
in int32; both scales fold into the kernel's per-channel alpha and the bias goes into the kernel:

    y[t, o] = (sx * sw[o]) * sum_i xq[t, i] * wq[o, i] + bias[o]

Why static, not per token: measured on an H100 (docs/gpu-results.md), a per-token scale needs a
row reduction before every Linear and a pass that applies it after, which cost more than the int8
kernel saves; a static scale makes quantization one pointwise op that torch.compile fuses into the
LayerNorm or GELU before the Linear. Rounding a 2:4 weight keeps its zeros, so the quantized
weight is still 2:4. Everything here is plain torch and runs on a CPU; `reference_linear`
computes exactly what the int8 kernel computes (in float64, where int32 sums of int8 products are
exact), so the sensitivity check and the accuracy of the int8 model need no GPU.
"""
from __future__ import annotations

import torch
from torch import nn

from .common import relative_error

INT8_MAX = 127
# A layer keeps int8 when its output on the calibration batch differs from the float layer's by
# at most this relative (Frobenius) error; fp16 rounding alone is ~5e-4.
MAX_LAYER_ERROR = 2e-2


def absmax_scales(t: torch.Tensor) -> torch.Tensor:
    """One scale per row: the row's largest |value| maps to 127. All-zero rows get scale 1."""
    amax = t.detach().abs().amax(dim=-1).float()
    return torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))


def tensor_scale(t: torch.Tensor) -> float:
    """One scale for a whole tensor: its largest |value| maps to 127 (1 for an all-zero tensor)."""
    amax = t.detach().abs().max().item()
    return amax / INT8_MAX if amax > 0 else 1.0


def quantize(t: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Round to nearest (ties to even, as torch.round) and clamp to [-127, 127]; one scale per row,
    or one for the whole tensor (a 0-dim `scales`)."""
    per_row = scales.unsqueeze(-1) if scales.dim() else scales
    return (t.float() / per_row).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)


def reference_linear(x2d: torch.Tensor, weight_q: torch.Tensor, weight_scales: torch.Tensor, input_scale: float,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """What the int8 kernel computes for float inputs x2d (tokens, in): quantization by the static
    input scale, int32-exact accumulation, alpha = input scale x weight scale, bias; float32 out."""
    x_q = quantize(x2d, torch.tensor(input_scale))
    acc = x_q.double() @ weight_q.double().t()
    out = (acc * (input_scale * weight_scales.double())).float()
    return out if bias is None else out + bias.float()


def layer_error(linear: nn.Linear, inputs: torch.Tensor, input_scale: float) -> float:
    """Relative error of the int8 layer vs the float layer on `inputs` (any leading shape)."""
    x2d = inputs.reshape(-1, linear.in_features).float()
    weight = linear.weight.detach().float()
    scales = absmax_scales(weight)
    bias = None if linear.bias is None else linear.bias.detach().float()
    exact = x2d @ weight.t() + (0 if bias is None else bias)
    return relative_error(exact, reference_linear(x2d, quantize(weight, scales), scales, input_scale, bias))


@torch.inference_mode()
def calibrate(model: nn.Module, linears: dict[str, nn.Linear],
              inputs: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """Per Linear, (static input scale, int8 error) on its real inputs, from one float forward of a
    calibration batch."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [linear.register_forward_hook(lambda module, args, out, name=name: captured.__setitem__(name, args[0]))
             for name, linear in linears.items()]
    try:
        model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    result = {}
    for name, linear in linears.items():
        scale = tensor_scale(captured[name])
        result[name] = (scale, layer_error(linear, captured[name], scale))
    return result


def int8_layers(errors: dict[str, float], max_error: float = MAX_LAYER_ERROR) -> dict[str, bool]:
    """Per layer, whether it may run int8 (its error within max_error)."""
    return {name: error <= max_error for name, error in errors.items()}


class Int8ReferenceLinear(nn.Module):
    """A Linear that computes what the int8 2:4 kernel computes, on any device (reference_linear):
    where no int8 kernel runs, the pipeline still scores the int8 model's accuracy."""

    def __init__(self, linear: nn.Linear, input_scale: float):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.input_scale = input_scale
        weight = linear.weight.detach()
        self.register_buffer("weight_scales", absmax_scales(weight))
        self.register_buffer("weight_q", quantize(weight, self.weight_scales))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = reference_linear(x.reshape(-1, self.in_features), self.weight_q, self.weight_scales, self.input_scale,
                               self.bias)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def emulate(model: nn.Module, input_scales: dict[str, float]) -> nn.Module:
    """Replace the named nn.Linears by Int8ReferenceLinears with their input scales (in place)."""
    for name, scale in input_scales.items():
        model.set_submodule(name, Int8ReferenceLinear(model.get_submodule(name), scale))
    return model
