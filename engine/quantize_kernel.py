"""kernels.quantize_input as one Triton kernel, launched directly: for int8 layers run eagerly on a GPU.

In a compiled model inductor fuses the quantization into the op before the int8 Linear. Run eagerly,
quantize_input is five float32 ops over the activation, and a torch.compile'd copy of it costs its
guards and wrappers on the host at every call; a forward of bert-base has 48 such calls, so here the
Triton kernel is launched directly. It needs triton (which CUDA builds of torch bring); under
TRITON_INTERPRET=1 it runs on CPU tensors, which is how the tests check it value for value.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _quantize(x_ptr, multipliers_ptr, out_ptr, numel, channels, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < numel
    x = tl.load(x_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    multiplier = tl.load(multipliers_ptr + offsets % channels, mask=inside, other=0.0)
    # Clamping before rounding gives the same integers (the bounds are integers) and keeps y small.
    y = tl.clamp(x * multiplier, -127.0, 127.0)
    # Round half to even, as torch.round (libdevice's rint has no interpreter version): y - floor(y) is exact.
    below = tl.floor(y)
    fraction = y - below
    odd = (below - 2.0 * tl.floor(below * 0.5)) == 1.0
    up = (fraction > 0.5) | ((fraction == 0.5) & odd)
    tl.store(out_ptr + offsets, (below + up.to(tl.float32)).to(tl.int8), mask=inside)


def quantize_input(x: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """kernels.quantize_input(x, multipliers) in one kernel: x (..., channels) of any float dtype,
    float32 multipliers (channels,)."""
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    numel = x.numel()
    if numel:
        _quantize[(triton.cdiv(numel, BLOCK),)](x, multipliers, out, numel, x.shape[-1], BLOCK=BLOCK)
    return out
