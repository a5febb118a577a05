"""The dense Linear with cuBLASLt's GELU epilogue: the fp16 dense model given the fusion the 2:4
engine's int8_gelu has.

Compiled, a dense Linear followed by GELU runs the matmul, then GELU as a separate pointwise kernel
that reads and writes the whole FFN activation. cuBLASLt can apply bias and GELU (tanh form) in the
matmul's epilogue; torch reaches it through torch._addmm_activation(use_gelu=True), which inductor
would decompose back into the two kernels, so it is called here inside an op the compiler keeps
whole (twofour::linear_gelu). gelu_epilogue_model gives each GELU pair's first Linear this epilogue
and makes the GELU after it a pass-through. Speed only: its accuracy is not scored.
Importing this module registers GeluEpilogueConfig with kernels.swap_linears.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import gelu_pairs
from .kernels import MODULE_FOR_CONFIG, named, swap_linears
from .plan import replace_gelu_activations


@torch.library.custom_op("twofour::linear_gelu", mutates_args=())
def linear_gelu(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """GELU, tanh form, of x2d @ weight.t() + bias: on a GPU one cuBLASLt matmul with the epilogue."""
    if x2d.is_cuda:
        return torch._addmm_activation(bias, x2d, weight.t(), use_gelu=True)
    return F.gelu(F.linear(x2d, weight, bias), approximate="tanh")


@linear_gelu.register_fake
def _(x2d, weight, bias):
    return x2d.new_empty((x2d.shape[0], weight.shape[0]))


class GeluEpilogueLinear(nn.Module):
    """GELU(x @ W.t() + bias), tanh form, in one matmul (linear_gelu)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("weight", weight)
        bias = linear.bias.detach() if linear.bias is not None else torch.zeros(self.out_features, dtype=weight.dtype,
                                                                               device=weight.device)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = linear_gelu(x.reshape(-1, self.in_features), self.weight, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)


class AppliedGelu(nn.Module):
    """The activation after a GeluEpilogueLinear: its input is GELU'd already."""

    replaces_gelu = True  # adapters.gelu_pairs still finds the pair

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass(frozen=True)
class GeluEpilogueConfig:
    pass


MODULE_FOR_CONFIG[GeluEpilogueConfig] = lambda linear, config: GeluEpilogueLinear(linear)


def gelu_epilogue_model(model: nn.Module) -> nn.Module:
    """A copy of `model` whose GELU pairs' first Linears run with the GELU epilogue (nn.Linears only:
    a Linear another config replaced is left as it is); {} GELU pairs (the generic adapter path): an
    unchanged copy."""
    model = copy.deepcopy(model)
    first = [name for name in gelu_pairs(model) if type(model.get_submodule(name)) is nn.Linear]
    swap_linears(model, lambda name: GeluEpilogueConfig(), named(first))
    replace_gelu_activations(model, first, AppliedGelu)
    return model
