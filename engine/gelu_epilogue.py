"""fp16 Linears with GELU in the matmul's epilogue: the benchmark's fp16 models given the fusion the
2:4 engine's int8_gelu has.

Compiled, a Linear followed by GELU runs the matmul, then GELU as a separate pointwise kernel that
reads and writes the whole FFN activation. Both libraries can apply GELU (tanh form) in the matmul's
epilogue instead:
- dense: cuBLASLt, which torch reaches through torch._addmm_activation(use_gelu=True); inductor would
  decompose that back into two kernels, so it is called inside an op the compiler keeps whole
  (twofour::linear_gelu);
- 2:4: cuSPARSELt, through the plan cache (kernels.gelu_sparse_mm) on the layers that run fp16 2:4.
gelu_epilogue_model gives each GELU pair's first Linear its epilogue and makes the GELU after it a
pass-through. Speed only: its accuracy is not scored.
Importing this module registers GeluEpilogueConfig with kernels.swap_linears.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import gelu_pairs
from .common import relative_error
from .kernels import (
    MODULE_FOR_CONFIG,
    SparseLinear,
    bucket_for,
    gelu_sparse_mm,
    named,
    sparse_mm,
    swap_linears,
)
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


class SparseGeluEpilogueLinear(nn.Module):
    """GELU (tanh form) of a SparseLinear that runs fp16 2:4 or dense: cuSPARSELt's epilogue applies it
    where a token bucket runs the fp16 kernel, GELU follows the matmul where it runs dense."""

    def __init__(self, sparse: SparseLinear):
        super().__init__()
        if why := why_no_sparse_epilogue(sparse):
            raise ValueError(why)
        self.sparse = sparse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sparse = self.sparse
        kernel = sparse.kernels[bucket_for(x.numel() // sparse.in_features, sparse.buckets)]
        if kernel is None:  # the layer's own dense path, then GELU
            return F.gelu(sparse(x), approximate="tanh")
        out = gelu_sparse_mm(sparse.packed, x.reshape(-1, sparse.in_features).contiguous(), sparse.bias,
                             kernel.alg_id, sparse.planned)
        return out.reshape(*x.shape[:-1], sparse.out_features)


def epilogue_error(layer: SparseGeluEpilogueLinear, seed: int = 0) -> float:
    """The largest relative error, over the token buckets where the layer runs fp16 2:4, of its
    epilogue's output against GELU (tanh) applied after the same 2:4 call without it, on random inputs:
    whether the library applies the epilogue as asked, at every plan the layer will run. Raises what
    the library raises where it refuses the epilogue."""
    sparse, errors = layer.sparse, [0.0]
    device, dtype = sparse.packed.device, sparse.packed.dtype  # an fp16 2:4 layer keeps its packed weight
    generator = torch.Generator(device=device).manual_seed(seed)
    for tokens, kernel in sparse.kernels.items():
        if kernel is None:
            continue
        x = torch.randn(tokens, sparse.in_features, generator=generator, device=device, dtype=dtype)
        fused = gelu_sparse_mm(sparse.packed, x, sparse.bias, kernel.alg_id, sparse.planned)
        apart = F.gelu(sparse_mm(sparse.packed, x, sparse.bias, kernel.alg_id, sparse.planned).float(),
                       approximate="tanh")
        errors.append(relative_error(apart, fused.float()))
    return max(errors)


def why_no_sparse_epilogue(sparse: SparseLinear) -> str | None:
    """Why a SparseLinear cannot take the GELU epilogue (None where it can)."""
    if sparse.planned is None:
        return f"{sparse.extra_repr()}: the GELU epilogue runs through the plan cache, which is off"
    if any(kernel is not None and kernel.kind != "fp16" for kernel in sparse.kernels.values()):
        return f"{sparse.extra_repr()}: an int8 kernel has its own epilogue (int8_gelu)"
    return None


class AppliedGelu(nn.Module):
    """The activation after a Linear with the GELU epilogue: its input is GELU'd already."""

    replaces_gelu = True  # adapters.gelu_pairs still finds the pair

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass(frozen=True)
class GeluEpilogueConfig:
    pass


MODULE_FOR_CONFIG[GeluEpilogueConfig] = lambda linear, config: GeluEpilogueLinear(linear)


def gelu_epilogue_model(model: nn.Module) -> nn.Module:
    """A copy of `model` whose GELU pairs' first Linears take the GELU epilogue: an nn.Linear the dense
    one, a SparseLinear the 2:4 one where it can (why_no_sparse_epilogue); others stay as they are, and
    so does the GELU after them. No GELU pairs (the generic adapter path): an unchanged copy."""
    model = copy.deepcopy(model)
    dense, sparse = [], []
    for name in gelu_pairs(model):
        module = model.get_submodule(name)
        if type(module) is nn.Linear:
            dense.append(name)
        elif isinstance(module, SparseLinear) and why_no_sparse_epilogue(module) is None:
            sparse.append(name)
    swap_linears(model, lambda name: GeluEpilogueConfig(), named(dense))
    for name in sparse:
        model.set_submodule(name, SparseGeluEpilogueLinear(model.get_submodule(name)))
    replace_gelu_activations(model, dense + sparse, AppliedGelu)
    return model
