"""engine/graphs.py on a CPU: which shapes are captured, and the bucketed runner's padding,
chunking and bounded graph cache (the model itself stands in for a graph there)."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch

from engine.graphs import BucketedRunner, CudaGraphRunner, bucketed, no_collection_during_capture
from test_engine_attention import small_bert

BATCH_BUCKETS, SEQ_BUCKETS = [1, 2, 4, 8], [16, 32, 64, 128]


def random_inputs(batch: int, seq: int, padded_rows: int = 0) -> dict[str, torch.Tensor]:
    """Random ids in two segments; the first `padded_rows` rows end in padding of their own."""
    generator = torch.Generator().manual_seed(batch * 1000 + seq)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    for row in range(min(padded_rows, batch)):
        attention_mask[row, max(1, seq - 1 - row):] = 0
    token_type_ids = torch.zeros(batch, seq, dtype=torch.long)
    token_type_ids[:, seq // 2:] = 1
    return {"input_ids": torch.randint(1, 100, (batch, seq), generator=generator), "attention_mask": attention_mask,
            "token_type_ids": token_type_ids}


def test_only_capturable_shapes_are_captured_and_others_run_eagerly():
    model = small_bert()
    runner = CudaGraphRunner(model, capturable=lambda shape: tuple(shape) == (4, 12))
    input_ids = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        expected = model(input_ids=input_ids).start_logits
    assert torch.equal(runner(input_ids=input_ids).start_logits, expected)
    assert not runner.graphs  # nothing captured


def test_a_dropped_runner_is_freed_at_once_not_by_the_cyclic_collector():
    """Its graphs must not outlive it until some later collection, which could fall inside another capture."""
    runner = CudaGraphRunner(small_bert())
    runner(input_ids=torch.randint(0, 100, (2, 12)))
    assert runner.graphs
    alive = weakref.ref(runner)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        del runner
        assert alive() is None
    finally:
        if was_enabled:
            gc.enable()


class Cycle:
    def __init__(self):
        self.me = self


@pytest.mark.parametrize("enabled_before", [True, False])
def test_garbage_is_collected_before_a_capture_and_never_during_it(enabled_before):
    was_enabled = gc.isenabled()
    (gc.enable if enabled_before else gc.disable)()
    try:
        dead = weakref.ref(Cycle())
        with no_collection_during_capture():
            assert dead() is None
            assert not gc.isenabled()
        assert gc.isenabled() == enabled_before
    finally:
        (gc.enable if was_enabled else gc.disable)()


def test_right_padding_with_a_zero_mask_leaves_the_real_tokens_logits_unchanged():
    """What bucketing relies on: BERT's positions are absolute and masked keys get no attention."""
    model = small_bert()
    inputs = random_inputs(3, 13)
    padded = {name: torch.nn.functional.pad(tensor, (0, 19)) for name, tensor in inputs.items()}
    with torch.no_grad():
        expected, output = model(**inputs), model(**padded)
    torch.testing.assert_close(output.start_logits[:, :13], expected.start_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(output.end_logits[:, :13], expected.end_logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch, seq, padded_rows, names", [
    (1, 1, 0, ("input_ids",)),
    (1, 16, 0, ("input_ids",)),  # a bucket exactly: goes in as given
    (1, 7, 0, ("input_ids", "attention_mask", "token_type_ids")),
    (3, 13, 2, ("input_ids", "attention_mask", "token_type_ids")),
    (5, 33, 5, ("input_ids", "attention_mask")),
    (8, 127, 1, ("input_ids", "token_type_ids")),
    (11, 20, 3, ("input_ids", "attention_mask", "token_type_ids")),  # past the largest batch: chunks of 8
    (2, 150, 1, ("input_ids", "attention_mask", "token_type_ids")),  # past the largest sequence: eager
])
def test_any_shape_gives_the_unpadded_models_logits(batch, seq, padded_rows, names):
    model = small_bert()
    runner = BucketedRunner(model, BATCH_BUCKETS, SEQ_BUCKETS, max_graphs=4)
    inputs = {name: tensor for name, tensor in random_inputs(batch, seq, padded_rows).items() if name in names}
    with torch.no_grad():
        expected = model(**inputs)
    output = runner(**inputs)
    assert output.start_logits.shape == output.end_logits.shape == (batch, seq)
    real = inputs.get("attention_mask", torch.ones(batch, seq)).bool()  # the caller's own padding may differ
    for name in ("start_logits", "end_logits"):
        torch.testing.assert_close(output[name][real], expected[name][real], rtol=0, atol=1e-5)


def test_padding_never_reaches_the_real_tokens():
    """Whatever fills the bucket (another pad id, other rows beside it) the real tokens' logits stay."""
    model = small_bert()
    inputs = random_inputs(3, 21, padded_rows=1)
    outputs = [BucketedRunner(model, BATCH_BUCKETS, SEQ_BUCKETS, pad_token_id=pad)(**inputs) for pad in (0, 7, 99)]
    alone = BucketedRunner(model, BATCH_BUCKETS, SEQ_BUCKETS)(**{name: t[:1] for name, t in inputs.items()})
    for output in outputs:
        assert torch.isfinite(output.start_logits).all()
        torch.testing.assert_close(output.start_logits, outputs[0].start_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(alone.start_logits, outputs[0].start_logits[:1], rtol=0, atol=1e-5)


class FakeGraph:
    """Stands in for a captured graph: runs the model, and records the shape it was made for."""

    def __init__(self, model, inputs):
        self.model, self.shape = model, tuple(inputs["input_ids"].shape)

    def __call__(self, inputs):
        assert tuple(inputs["input_ids"].shape) == self.shape
        return self.model(**inputs)


def test_graphs_are_captured_on_first_use_and_the_least_recently_used_is_dropped():
    model = small_bert()
    captured = []

    def capture(inputs):
        captured.append(FakeGraph(model, inputs))
        return captured[-1]

    runner = BucketedRunner(model, BATCH_BUCKETS, SEQ_BUCKETS, max_graphs=2, capture=capture)
    for batch, seq in [(1, 5), (2, 30), (1, 9), (1, 16), (3, 40), (2, 17)]:
        runner(**random_inputs(batch, seq))
    # buckets (1, 16), (2, 32), (1, 16) again, (1, 16) again, (4, 64) drops (2, 32), (2, 32) drops (1, 16)
    assert [graph.shape for graph in captured] == [(1, 16), (2, 32), (4, 64), (2, 32)]
    assert [signature[0][1] for signature in runner.graphs] == [(4, 64), (2, 32)]
    dropped = [weakref.ref(graph) for graph in captured[:2]]
    captured.clear()
    gc.collect()
    assert all(ref() is None for ref in dropped)  # nothing holds an evicted graph


def test_bucketed_covers_the_tuned_shapes_and_everything_below():
    runner = bucketed(small_bert(), [16, 64, 256], 384, compile=False)
    assert runner.batch_buckets == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert runner.seq_buckets == [64, 128, 192, 256, 320, 384, 448, 512]
    odd = bucketed(small_bert(), [12], 100, compile=False)
    assert odd.batch_buckets == [1, 2, 4, 8, 12] and 100 in odd.seq_buckets


def test_max_graphs_must_keep_one():
    with pytest.raises(ValueError, match="max_graphs=0"):
        BucketedRunner(small_bert(), BATCH_BUCKETS, SEQ_BUCKETS, max_graphs=0)
