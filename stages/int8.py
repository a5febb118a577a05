"""int8 x 2:4: the quantization math, and which layers can take int8 without hurting accuracy.

Symmetric int8 in [-127, 127] (no -128, so negating a value never overflows): weights get one
scale per output channel, computed once; activations one scale per token, computed on the fly.
The int8 matmul accumulates in int32; the weight scale can be folded into the kernel's per-channel
alpha and the token scale applied to its output rows:

    y[t, o] = sx[t] * sw[o] * sum_i xq[t, i] * wq[o, i] + bias[o]

Rounding a 2:4 weight keeps its zeros, so the quantized weight is still 2:4. Everything here is
plain torch and runs on a CPU; `reference_linear` computes exactly what an int8 kernel computes
(in float64, where int32 sums of int8 products are exact), so the sensitivity check needs no GPU.
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


def quantize(t: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Round to nearest (ties to even, as torch.round) and clamp to [-127, 127], per-row scales."""
    return (t.float() / scales.unsqueeze(-1)).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)


def reference_linear(x2d: torch.Tensor, weight_q: torch.Tensor, weight_scales: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """What the int8 kernel computes for float inputs x2d (tokens, in): per-token quantization,
    int32-exact accumulation, both scales, bias; float32 out."""
    token_scales = absmax_scales(x2d)
    x_q = quantize(x2d, token_scales)
    acc = x_q.double() @ weight_q.double().t()
    out = (acc * token_scales.double().unsqueeze(-1) * weight_scales.double()).float()
    return out if bias is None else out + bias.float()


def layer_error(linear: nn.Linear, inputs: torch.Tensor) -> float:
    """Relative error of the int8 layer vs the float layer on `inputs` (any leading shape)."""
    x2d = inputs.reshape(-1, linear.in_features).float()
    weight = linear.weight.detach().float()
    scales = absmax_scales(weight)
    bias = None if linear.bias is None else linear.bias.detach().float()
    exact = x2d @ weight.t() + (0 if bias is None else bias)
    return relative_error(exact, reference_linear(x2d, quantize(weight, scales), scales, bias))


@torch.inference_mode()
def sensitivity(model: nn.Module, linears: dict[str, nn.Linear], inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each Linear's int8 error on its real inputs, from one float forward of a calibration batch."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [linear.register_forward_hook(lambda module, args, out, name=name: captured.__setitem__(name, args[0]))
             for name, linear in linears.items()]
    try:
        model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: layer_error(linear, captured[name]) for name, linear in linears.items()}


def int8_layers(errors: dict[str, float], max_error: float = MAX_LAYER_ERROR) -> dict[str, bool]:
    """Per layer, whether it may run int8 (its error within max_error)."""
    return {name: error <= max_error for name, error in errors.items()}


class Int8ReferenceLinear(nn.Module):
    """A Linear that computes what the int8 2:4 kernel computes, on any device (reference_linear):
    where no int8 kernel runs, the pipeline still scores the int8 model's accuracy."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("weight_scales", absmax_scales(weight))
        self.register_buffer("weight_q", quantize(weight, self.weight_scales))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = reference_linear(x.reshape(-1, self.in_features), self.weight_q, self.weight_scales, self.bias)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def emulate(model: nn.Module, names: set[str]) -> nn.Module:
    """Replace the named nn.Linears by Int8ReferenceLinears (in place)."""
    for name in names:
        model.set_submodule(name, Int8ReferenceLinear(model.get_submodule(name)))
    return model
