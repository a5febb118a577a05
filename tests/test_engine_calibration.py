"""engine/calibration.py: each Linear's input in one forward, grouped by the tensor read, and the int8 smoothing and scales from it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.adapters import fuse_qkv
from engine.calibration import (
    CLIP_RATIOS,
    calibrate_int8,
    calibrate_layers,
    group_by_input,
    int8_layers,
    layer_errors,
    layer_inputs,
)
from engine.kernels import Int8ReferenceLinear, smoothing_factors, tensor_scale
from engine.adapters import encoder_linears
from engine.models import load_qa_model


def test_an_outlier_channel_fails_int8_unless_smoothing_moves_it_into_the_weight():
    torch.manual_seed(0)
    linear = nn.Linear(256, 128)
    gaussian = torch.randn(32, 256)
    assert 1e-3 < calibrate_layers({"l": linear}, gaussian, strength=0.0)["l"][2] < 2e-2
    # One huge channel (as in BERT's outlier dimensions) crushes every other channel into a few
    # int8 steps under one scale; smoothing divides it down (and scales its weight column up).
    outliers = gaussian.clone()
    outliers[:, 7] *= 500.0
    errors = {"plain": calibrate_layers({"l": linear}, outliers, strength=0.0)["l"][2],
              "smoothed": calibrate_layers({"l": linear}, outliers, strength=0.8)["l"][2]}
    assert int8_layers(errors) == {"plain": False, "smoothed": True}


def test_calibration_scales_each_layer_by_its_own_input_and_removes_its_hooks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    model.forward = lambda input_ids: nn.Sequential.forward(model, input_ids)  # QA models take input_ids=
    linears = {"0": model[0], "2": model[2]}
    x = torch.randn(4, 16)
    calibrated = calibrate_int8(model, linears, {"input_ids": x}, strength=0.5)
    assert set(calibrated) == {"0", "2"}
    with torch.no_grad():
        inputs = {"0": x, "2": torch.relu(model[0](x))}
    for name, layer_input in inputs.items():
        smoothing, input_scale, error = calibrated[name]
        assert torch.equal(smoothing, smoothing_factors(layer_input.abs().amax(0), linears[name].weight, 0.5))
        assert input_scale == pytest.approx(tensor_scale(layer_input / smoothing))
        assert 0 < error < 0.05
    assert not model[0]._forward_hooks and not model[2]._forward_hooks


def test_linears_reading_one_input_share_one_smoothing_and_scale():
    """A BERT layer's query, key and value read the same tensor: calibrated as one group, from the
    largest |w| over all three weights, so one quantized input can serve all three."""

    class QueryKeyValue(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value, self.out = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 8), nn.Linear(16, 8)

        def forward(self, input_ids):
            q, k, v = self.query(input_ids), self.key(input_ids), self.value(input_ids)
            return self.out(q * k)[..., :8] + v

    torch.manual_seed(0)
    model = QueryKeyValue()
    model.key.weight.data[:, 3] *= 40  # one column far larger in one of the three
    x = torch.randn(4, 6, 16)
    linears = dict(model.named_children())
    calibrated = calibrate_int8(model, linears, {"input_ids": x}, strength=0.5)
    group = [calibrated[n] for n in ("query", "key", "value")]
    weights = torch.cat([model.query.weight, model.key.weight, model.value.weight])
    expected = smoothing_factors(x.reshape(-1, 16).abs().amax(0), weights, 0.5)
    for smoothing, scale, error in group:
        assert smoothing is group[0][0] and torch.equal(smoothing, expected)
        assert scale == group[0][1] == pytest.approx(tensor_scale(x / expected))
        assert 0 < error < 0.05
    alone = calibrate_layers({"query": model.query}, x, strength=0.5)["query"][0]
    assert not torch.equal(alone, expected)  # on its own, the query would have been smoothed differently
    out_input = (model.query(x) * model.key(x)).detach()
    assert torch.equal(calibrated["out"][0], smoothing_factors(out_input.reshape(-1, 16).abs().amax(0),
                                                                model.out.weight, 0.5))


def test_fused_query_key_value_is_the_grouped_int8_math_exactly(tiny_model):
    """One int8 Linear with the three weights stacked (fuse_qkv, what the GPU runs) gets the smoothing
    and scale the three got as a group, and computes exactly their three outputs side by side."""

    model = load_qa_model(str(tiny_model)).eval()
    inputs = {"input_ids": torch.randint(0, 1000, (3, 20))}
    attention = model.bert.encoder.layer[1].attention.self
    names = [f"bert.encoder.layer.1.attention.self.{part}" for part in ("query", "key", "value")]
    parts = [attention.query, attention.key, attention.value]
    grouped = calibrate_int8(model, dict(zip(names, parts)), inputs, strength=0.8)
    fuse_qkv(model)
    fused_name = "bert.encoder.layer.1.attention.self.qkv"
    smoothing, scale, error = calibrate_int8(model, {fused_name: attention.qkv}, inputs, strength=0.8)[fused_name]
    assert torch.equal(smoothing, grouped[names[0]][0]) and scale == grouped[names[0]][1]
    assert 0 < error <= max(e for _, _, e in grouped.values())
    x = torch.randn(10, attention.qkv.in_features) * 3
    separate = torch.cat([Int8ReferenceLinear(part, smoothing, scale)(x) for part in parts], dim=-1)
    assert torch.equal(Int8ReferenceLinear(attention.qkv, smoothing, scale)(x), separate)


def test_layers_are_grouped_by_the_input_they_read_in_forward_order(tiny_model):
    model = load_qa_model(str(tiny_model)).eval()
    layers = {name: linear for name, linear in encoder_linears(model).items() if "pooler" not in name}
    groups = group_by_input(layer_inputs(model, layers, {"input_ids": torch.tensor([[101, 2054, 2003, 102]])}))
    block = "bert.encoder.layer.0."
    assert groups[:4] == [[f"{block}attention.self.query", f"{block}attention.self.key", f"{block}attention.self.value"],
                          [f"{block}attention.output.dense"], [f"{block}intermediate.dense"], [f"{block}output.dense"]]
    assert len(groups) == 8 and sum(groups, []) == list(layers)  # 2 layers of 4 groups, every Linear once


def test_an_unsmoothed_input_clips_its_rare_largest_values_where_that_errs_less():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(256, 64).abs()  # a long tail, as after a GELU
    x[0, 0] = 12.0  # one rare value far out
    (smoothing, scale, error), = calibrate_layers({"l": linear}, x, None).values()
    full_range = layer_errors({"l": linear}, x, torch.ones(64), tensor_scale(x))["l"]
    assert torch.equal(smoothing, torch.ones(64))
    assert scale in [tensor_scale(x) * ratio for ratio in CLIP_RATIOS] and scale < tensor_scale(x)
    assert error < full_range
