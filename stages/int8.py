"""int8 x 2:4: the quantization math, and which layers can take int8 without hurting accuracy.

Symmetric int8 in [-127, 127] (no -128, so negating a value never overflows). Activations are
quantized with static scales calibrated on a calibration batch, SmoothQuant-style (Xiao et al.,
2023): BERT's inputs to a Linear have a few channels far larger than the rest, so each input
channel j is first divided by a smoothing factor s_j = max|x_j|^a / max|w_j|^(1-a) (a =
`accelerate.int8_smoothing`) and the weight's column j multiplied by it, which leaves x @ W.t()
unchanged; then the smoothed input gets one scale for the whole tensor (its largest |value| maps
to 127, larger values later clamp) and the smoothed weight one scale per output channel:

    y[t, o] = alpha[o] * sum_j xq[t, j] * wq[o, j] + bias[o],   xq = round(x * multipliers),
    multipliers[j] = 1 / (s_j * input_scale),   alpha[o] = input_scale * weight_scale[o]

Why static, not per token: measured on an H100 (docs/gpu-results.md), a per-token scale needs a
row reduction before every Linear and a pass that applies it after, which cost more than the int8
kernel saves; with static scales, quantizing is one pointwise op that torch.compile fuses into the
LayerNorm or GELU before the Linear, and alpha and the bias go into the kernel. Scaling columns
keeps the weight's 2:4 zeros. Everything here is plain torch and runs on a CPU; `reference_linear`
computes exactly what the int8 kernel computes (in float64, where int32 sums of int8 products are
exact), so the sensitivity check and the accuracy of the int8 model need no GPU.
"""
from __future__ import annotations

import torch
from torch import nn

from .common import group_by_input, layer_inputs, relative_error

INT8_MAX = 127
# A layer keeps int8 when its output on the calibration batch differs from the float layer's by
# at most this relative (Frobenius) error; fp16 rounding alone is ~5e-4.
MAX_LAYER_ERROR = 2e-2
# Channels whose calibration inputs or weights are all zero get no smoothing (s_j = 1).
_TINY = 1e-8


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


def calibrate_layers(linears: dict[str, nn.Linear], inputs: torch.Tensor,
                     strength: float) -> dict[str, tuple[torch.Tensor, float, float]]:
    """Per Linear, (smoothing factors, input scale, relative error of the int8 layer vs the float
    layer), for Linears that all read `inputs` (any leading shape): one smoothing (from the largest
    |w| of each input channel over all their weights) and one scale for all of them (a BERT layer's
    query, key and value; SmoothQuant does the same), so one quantized input serves them all."""
    first = next(iter(linears.values()))
    x2d = inputs.reshape(-1, first.in_features).float()
    weights = torch.cat([linear.weight.detach() for linear in linears.values()])
    smoothing = smoothing_factors(x2d.abs().amax(dim=0), weights, strength)
    input_scale = tensor_scale(x2d / smoothing)
    calibrated = {}
    for name, linear in linears.items():
        weight = linear.weight.detach().float()
        bias = None if linear.bias is None else linear.bias.detach().float()
        exact = x2d @ weight.t() + (0 if bias is None else bias)
        error = relative_error(exact, reference_linear(x2d, Int8Weights(linear, smoothing, input_scale), bias))
        calibrated[name] = (smoothing, input_scale, error)
    return calibrated


@torch.inference_mode()
def calibrate(model: nn.Module, linears: dict[str, nn.Linear], inputs: dict[str, torch.Tensor],
              strength: float) -> dict[str, tuple[torch.Tensor, float, float]]:
    """calibrate_layers on each group of Linears that read the same input, from one float forward
    of a calibration batch."""
    captured = layer_inputs(model, linears, inputs)
    calibrated = {}
    for names in group_by_input(captured):
        calibrated.update(calibrate_layers({name: linears[name] for name in names}, captured[names[0]], strength))
    return calibrated


def int8_layers(errors: dict[str, float], max_error: float = MAX_LAYER_ERROR) -> dict[str, bool]:
    """Per layer, whether it may run int8 (its error within max_error)."""
    return {name: error <= max_error for name, error in errors.items()}


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


def emulate(model: nn.Module, calibration: dict[str, tuple[torch.Tensor, float]]) -> nn.Module:
    """Replace the named nn.Linears by Int8ReferenceLinears, given (smoothing, input scale) each (in place)."""
    for name, (smoothing, input_scale) in calibration.items():
        model.set_submodule(name, Int8ReferenceLinear(model.get_submodule(name), smoothing, input_scale))
    return model
