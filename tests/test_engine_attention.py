"""engine/attention.py: sdpa with masks the fused kernels take, and one query/key/value Linear."""
from __future__ import annotations

import pytest
import torch

from engine.adapters import fuse_qkv
from engine.attention import FUSED_SDPA, FusedQKVSelfAttention, _sdpa_fused_mask, capture_context, use_fused_attention


def small_bert():
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    return BertForQuestionAnswering(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=64, vocab_size=100)).eval()


def test_fused_attention_drops_a_broadcast_mask_and_keeps_results():
    model = small_bert()
    input_ids = torch.randint(0, 100, (2, 12))
    attention_mask = torch.ones(2, 12, dtype=torch.long)
    attention_mask[1, 8:] = 0
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=attention_mask).start_logits
        use_fused_attention(model)
        after = model(input_ids=input_ids, attention_mask=attention_mask).start_logits
    assert model.config._attn_implementation == FUSED_SDPA
    assert torch.allclose(before, after, atol=1e-6)

    seen = []
    monkey_forward = lambda module, q, k, v, mask, **kw: seen.append(mask)  # noqa: E731
    import transformers.integrations.sdpa_attention as sdpa
    original, sdpa.sdpa_attention_forward = sdpa.sdpa_attention_forward, monkey_forward
    try:
        q = torch.randn(2, 2, 12, 16)
        _sdpa_fused_mask(None, q, q, q, torch.tensor(True).expand(2, 1, 12, 12))
        _sdpa_fused_mask(None, q, q, q, torch.ones(2, 1, 12, 1, dtype=torch.bool).expand(2, 1, 12, 12))
    finally:
        sdpa.sdpa_attention_forward = original
    assert seen[0] is None  # one value broadcast everywhere: nothing masked
    assert seen[1].stride(-1) == 1 and seen[1].shape == (2, 1, 12, 12)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_fuse_qkv_stacks_query_key_value_and_keeps_the_outputs(attention):
    model = small_bert()
    model.config._attn_implementation = attention
    input_ids = torch.randint(0, 100, (2, 12))
    attention_mask = torch.ones(2, 12, dtype=torch.long)
    attention_mask[1, 7:] = 0
    first = model.bert.encoder.layer[0].attention.self
    stacked_weight = torch.cat([first.query.weight, first.key.weight, first.value.weight]).detach().clone()
    stacked_bias = torch.cat([first.query.bias, first.key.bias, first.value.bias]).detach().clone()
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=attention_mask)
        fuse_qkv(model)
        after = model(input_ids=input_ids, attention_mask=attention_mask)
    linears = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    assert not any(name.endswith(("query", "key", "value")) for name in linears)
    assert sum(name.endswith("attention.self.qkv") for name in linears) == 2
    assert isinstance(first, FusedQKVSelfAttention) and first.qkv.weight.shape == (96, 32)
    assert torch.equal(first.qkv.weight, stacked_weight) and torch.equal(first.qkv.bias, stacked_bias)
    torch.testing.assert_close(after.start_logits, before.start_logits)
    torch.testing.assert_close(after.end_logits, before.end_logits)
    with pytest.raises(ValueError, match="no key/value cache"):
        first(torch.randn(1, 3, 32), past_key_values=object())


def test_fused_attention_compiles_as_one_graph_inside_capture_context():
    """The masks are dropped while capturing without a graph break (a ContextVar read broke one per
    layer, which cost int8 its fusions on an H100)."""

    model = use_fused_attention(small_bert())
    import transformers.integrations.sdpa_attention as sdpa

    input_ids = torch.randint(0, 100, (2, 12))
    unpadded = torch.ones_like(input_ids)  # a mask tensor reaches the attention, as under capture
    seen, original = [], sdpa.sdpa_attention_forward
    with torch.no_grad(), capture_context({"input_ids": input_ids}):
        explained = torch._dynamo.explain(model)(input_ids=input_ids, attention_mask=unpadded)
        sdpa.sdpa_attention_forward = lambda module, q, k, v, mask, **kw: (seen.append(mask), original(
            module, q, k, v, mask, **kw))[1]
        try:
            model(input_ids=input_ids, attention_mask=unpadded)
        finally:
            sdpa.sdpa_attention_forward = original
    torch.compiler.reset()
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    assert seen == [None, None]  # one per layer: every mask dropped while capturing
