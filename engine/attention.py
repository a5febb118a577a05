"""Attention for inference: transformers' sdpa with masks that PyTorch's fused kernels accept, and
BERT's query, key and value as one Linear.

Used where models are accelerated or timed (accelerate, benchmark), not in training.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import BertSelfAttention, eager_attention_forward

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
    may reject (a broadcast mask's last stride is 0; they need 1) for the math kernel, which made a
    graphed model slower than the same model run eagerly. A mask broadcast from
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


class FusedQKVSelfAttention(BertSelfAttention):
    """BertSelfAttention whose query, key and value are one Linear, `qkv` (made by fuse_qkv).

    One matmul with three times the outputs instead of three, and for int8 one quantized copy of
    the input instead of three: torch.compile does not merge the three identical quantizations
    (measured on an H100, docs/gpu-results.md). Inference only: no key/value cache.
    """

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                past_key_values=None, **kwargs):
        if past_key_values is not None:
            raise ValueError("FusedQKVSelfAttention is for encoder inference: it keeps no key/value cache")
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.attention_head_size)
        query, key, value = (part.view(hidden_shape).transpose(1, 2)
                             for part in self.qkv(hidden_states).split(self.all_head_size, dim=-1))
        # .get, not get_interface: the GPU box's transformers (5.17) may predate it; "eager" is not registered.
        attention = ALL_ATTENTION_FUNCTIONS.get(self.config._attn_implementation, eager_attention_forward)
        output, weights = attention(self, query, key, value, attention_mask, dropout=0.0, scaling=self.scaling,
                                    **kwargs)
        return output.reshape(*input_shape, -1).contiguous(), weights


def fuse_qkv(model: nn.Module) -> nn.Module:
    """Give every BertSelfAttention one `qkv` Linear, the query, key and value weights stacked in that
    order, in place of the three (in place; same outputs). Other attention classes are left as they are."""
    for module in model.modules():
        if type(module) is not BertSelfAttention:
            continue
        parts = [module.query, module.key, module.value]
        if any(type(part) is not nn.Linear or part.bias is None for part in parts):
            continue
        weight = torch.cat([part.weight.detach() for part in parts])
        qkv = nn.Linear(weight.shape[1], weight.shape[0], device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            qkv.weight.copy_(weight)
            qkv.bias.copy_(torch.cat([part.bias.detach() for part in parts]))
        del module.query, module.key, module.value
        module.qkv = qkv
        module.__class__ = FusedQKVSelfAttention
    return model
