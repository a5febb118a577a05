"""The dense fp8 comparison model (stages/fp8.py): its arithmetic on a CPU, where torch._scaled_mm runs too."""
from __future__ import annotations

import torch
from torch import nn

from stages import benchmark, fp8
from stages.common import relative_error
from stages.int8 import tensor_scale


def test_fp8_linear_is_the_linear_to_fp8_precision_and_clamps_past_its_scale():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(3, 8, 64)
    layer = fp8.Fp8Linear(linear, tensor_scale(x, fp8.FP8_MAX))
    assert layer.weight_t.dtype == fp8.FP8 and layer.weight_t.stride() == (1, 64)  # column-major (in, out)
    with torch.no_grad():
        expected, got = linear(x), layer(x)
    assert got.shape == (3, 8, 32) and got.dtype == x.dtype
    assert 1e-3 < relative_error(expected, got) < 5e-2  # e4m3 keeps 3 mantissa bits
    assert fp8.to_fp8(torch.tensor([1000.0, -1000.0]), 1.0).float().tolist() == [448.0, -448.0]


def test_fp8_model_swaps_every_encoder_linear_and_keeps_the_outputs_close(tiny_model):
    from stages.modeling import load_qa_model

    model = load_qa_model(str(tiny_model)).eval()
    input_ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    converted = fp8.fp8_model(model, {"input_ids": input_ids})
    swapped = [name for name, module in converted.named_modules() if isinstance(module, fp8.Fp8Linear)]
    assert len(swapped) == 12 and not any(isinstance(m, fp8.Fp8Linear) for m in model.modules())  # a copy
    with torch.no_grad():
        error = relative_error(model(input_ids=input_ids).start_logits, converted(input_ids=input_ids).start_logits)
    assert 0 < error < 0.1


def test_fp8_is_only_offered_on_gpus_with_fp8_tensor_cores():
    assert not fp8.available(torch.device("cpu"))


def test_speedups_compare_dense_with_accelerated_and_ignore_the_fp8_row():
    latency = {"bs4": {"dense_compiled": 2.0, "accelerated_compiled": 1.0, "dense_fp8_compiled": 1.5,
                       "dense_eager": 3.0, "accelerated_eager": 3.0}}
    assert benchmark.speedups(latency) == {"bs4": {"compiled": 2.0, "eager": 1.0}}
