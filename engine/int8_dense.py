"""The int8 dense Linear: the 8-bit dense model the int8 2:4 engine is measured against.

It computes what the int8 2:4 layers compute, on the dense tensor cores: the same SmoothQuant
smoothing, static input scale and per-output-channel weight scales (kernels.Int8Weights), the input
quantized as they quantize it (kernels.quantize_for_kernel), int32 accumulation (torch._int_mm), then
alpha and the bias in float32, out in the bias's dtype. Compiled, the quantization fuses into the op
before and alpha and bias into one pointwise kernel after the matmul, as the int8 2:4 layers' do.
Importing this module registers Int8DenseConfig with kernels.swap_linears.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import MODULE_FOR_CONFIG, Int8Weights, quantize_for_kernel

# torch._int_mm on a GPU takes more than 16 rows: fewer tokens are padded up to this.
INT_MM_MIN_ROWS = 17


class Int8DenseLinear(nn.Module):
    """x @ W.t() + bias in int8 on the dense tensor cores (see the module docstring). Speed only: its
    accuracy is not scored."""

    def __init__(self, linear: nn.Linear, smoothing: torch.Tensor, input_scale: float):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weights = Int8Weights(linear, smoothing, input_scale)
        # torch._int_mm takes its second operand column-major: W.t() of a row-major W is.
        self.register_buffer("weight_t", weights.weight_q.t())
        self.register_buffer("alpha", weights.alpha)
        self.register_buffer("multipliers", weights.multipliers)
        weight = linear.weight.detach()
        bias = linear.bias.detach() if linear.bias is not None else torch.zeros(self.out_features, dtype=weight.dtype,
                                                                               device=weight.device)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2d = x.reshape(-1, self.in_features)
        tokens = x2d.shape[0]
        x_q = quantize_for_kernel(x2d, self.multipliers)
        if tokens < INT_MM_MIN_ROWS:
            x_q = F.pad(x_q, (0, 0, 0, INT_MM_MIN_ROWS - tokens))
        accumulated = torch._int_mm(x_q, self.weight_t)[:tokens]
        out = (accumulated.float() * self.alpha + self.bias.float()).to(self.bias.dtype)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


@dataclass(frozen=True)
class Int8DenseConfig:
    smoothing: torch.Tensor = field(repr=False)
    input_scale: float


MODULE_FOR_CONFIG[Int8DenseConfig] = lambda linear, c: Int8DenseLinear(linear, c.smoothing, c.input_scale)
