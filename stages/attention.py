"""Attention for GPU inference: transformers' sdpa with masks that PyTorch's fused kernels accept.

Used where models run as CUDA graphs or compiled (accelerate, benchmark), not in training.
"""
from __future__ import annotations

import contextlib

from transformers import PreTrainedModel

FUSED_SDPA = "sdpa_fused_mask"
# A module global, not a ContextVar: torch.compile traces reading a global (and guards on its
# value) but breaks the graph at ContextVar.get, which on an H100 cost int8 bert-base its fusions.
# Graphs are captured by one thread at a time, so nothing else sees it set.
_nothing_masked = False


@contextlib.contextmanager
def capture_context(inputs: dict):
    """For CudaGraphRunner: inputs without an attention_mask have no padding, so while their graph is
    captured the attention masks transformers builds (it cannot read values then) are dropped."""
    global _nothing_masked
    before, _nothing_masked = _nothing_masked, "attention_mask" not in inputs
    try:
        yield
    finally:
        _nothing_masked = before


def _sdpa_fused_mask(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention, with a mask that PyTorch's fused kernels accept.

    While a CUDA graph is captured or torch.compile traces, transformers cannot look at the padding
    mask's values, so it builds a 4-D mask even when nothing is masked, which the fused SDPA kernels
    may reject (a broadcast mask's last stride is 0; they need 1) for the math kernel; on an H100
    that made bert-base at batch 64 run 49 ms graphed against 11.6 ms eager. A mask broadcast from
    one value masks nothing (all False would leave attention undefined), so it is dropped, as is
    every mask while capture_context says the inputs have no padding; any other mask is made
    contiguous in its last dimension.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None:
        if _nothing_masked or not any(attention_mask.stride()):
            attention_mask = None
        elif attention_mask.stride(-1) != 1:
            attention_mask = attention_mask.contiguous()
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def use_fused_attention(model: PreTrainedModel) -> PreTrainedModel:
    """Run the model's attention through _sdpa_fused_mask (models on sdpa only; others are left as they are)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if model.config._attn_implementation not in ("sdpa", FUSED_SDPA):
        return model
    AttentionInterface.register(FUSED_SDPA, _sdpa_fused_mask)
    AttentionMaskInterface.register(FUSED_SDPA, sdpa_mask)
    model.config._attn_implementation = FUSED_SDPA
    return model
