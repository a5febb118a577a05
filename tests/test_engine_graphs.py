"""engine/graphs.py on a CPU: which shapes are captured; any other shape runs the model eagerly."""
from __future__ import annotations

import torch

from engine.graphs import graphed
from test_engine_attention import small_bert


def test_only_the_tuned_shapes_are_captured_and_others_run_eagerly():
    model = small_bert()
    runner = graphed(model, [4, 16], 12, compile=False)
    assert runner.capturable(torch.Size([4, 12])) and runner.capturable(torch.Size([16, 12]))
    assert not runner.capturable(torch.Size([4, 11])) and not runner.capturable(torch.Size([8, 12]))
    input_ids = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        expected = model(input_ids=input_ids).start_logits
    assert torch.equal(runner(input_ids=input_ids).start_logits, expected)
    assert not runner.graphs  # nothing captured
