"""Attention for inference: transformers' sdpa with masks that PyTorch's fused kernels accept, and
self-attention modules whose query, key and value are one Linear (one class per family; which
modules become them is engine/adapters.py's model adapters).

Used where models are accelerated or timed (accelerate, benchmark), not in training.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import BertSelfAttention, eager_attention_forward
from transformers.models.distilbert.modeling_distilbert import DistilBertSelfAttention
from transformers.models.roberta.modeling_roberta import RobertaSelfAttention

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


class FusedQKVAttention(nn.Module):
    """Self-attention whose query, key and value are one Linear, `qkv` (made by adapters.fuse_qkv): the
    attention part shared by each family's fused class below, which also keeps the family's own class
    as a base.

    One matmul with three times the outputs instead of three, and for int8 one quantized copy of
    the input instead of three: torch.compile does not merge the three identical quantizations
    (measured on an H100, docs/gpu-results.md). Inference only: no key/value cache.
    """

    def attend(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, past_key_values,
               **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the heads' outputs joined, (batch, seq, hidden), before any output projection; attention weights)."""
        if past_key_values is not None:
            raise ValueError(f"{type(self).__name__} is for encoder inference: it keeps no key/value cache")
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.attention_head_size)
        query, key, value = (part.view(hidden_shape).transpose(1, 2)
                             for part in self.qkv(hidden_states).chunk(3, dim=-1))
        # .get, not get_interface: the GPU box's transformers (5.17) may predate it; "eager" is not registered.
        attention = ALL_ATTENTION_FUNCTIONS.get(self.config._attn_implementation, eager_attention_forward)
        output, weights = attention(self, query, key, value, attention_mask, dropout=0.0, scaling=self.scaling,
                                    **kwargs)
        return output.reshape(*input_shape, -1).contiguous(), weights

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                past_key_values=None, **kwargs):
        return self.attend(hidden_states, attention_mask, past_key_values, **kwargs)


class FusedQKVSelfAttention(FusedQKVAttention, BertSelfAttention):
    """BertSelfAttention with query, key and value fused."""


class FusedQKVRobertaSelfAttention(FusedQKVAttention, RobertaSelfAttention):
    """RobertaSelfAttention (BERT's, copied) with query, key and value fused."""


class FusedQKVDistilBertSelfAttention(FusedQKVAttention, DistilBertSelfAttention):
    """DistilBertSelfAttention with q_lin, k_lin and v_lin fused: its output projection, out_lin, is
    inside the attention module, so it runs here too."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        output, weights = self.attend(hidden_states, attention_mask, None, **kwargs)
        return self.out_lin(output), weights
