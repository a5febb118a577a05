"""Dense fp8 (e4m3) Linears through torch._scaled_mm: the benchmark's comparison row for int8 x 2:4.

On Hopper, fp8 runs the dense tensor cores at twice the fp16 rate, so it is the dense model to beat
besides fp16. Speed only: one static scale per weight and per input (inputs calibrated on one
forward of the benchmark's random tokens), fp16 out with the bias in the kernel; the benchmark runs
it compiled as a CUDA graph, as it runs the others. Its accuracy is not scored.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .common import layer_inputs
from .int8 import tensor_scale
from .modeling import encoder_linears

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
MIN_CAPABILITY = (8, 9)  # fp8 tensor cores: Ada and Hopper


def available(device: torch.device) -> bool:
    """Whether a device runs fp8 matmuls (torch._scaled_mm on fp8 tensor cores)."""
    return (device.type == "cuda" and hasattr(torch, "_scaled_mm")
            and torch.cuda.get_device_capability(device) >= MIN_CAPABILITY)


def to_fp8(t: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    return (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)


class Fp8Linear(nn.Module):
    """x @ W.t() + bias with x and W in fp8, per-tensor scales, accumulation in float32, fp16 out."""

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
                               scale_b=self.weight_scale, bias=self.bias, out_dtype=torch.float16)
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)


def fp8_model(model: nn.Module, inputs: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of `model` with its encoder Linears in fp8, input scales from one forward of `inputs`."""
    model = copy.deepcopy(model)
    linears = encoder_linears(model)
    captured = layer_inputs(model, linears, inputs)
    for name, linear in linears.items():
        model.set_submodule(name, Fp8Linear(linear, tensor_scale(captured[name], FP8_MAX)))
    return model
