"""int8 x 2:4 quantization math against a float reference, and the accelerate stage's int8 check on a CPU."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from stages import accelerate, benchmark
from stages.common import relative_error
from stages.int8 import (
    INT8_MAX,
    MAX_LAYER_ERROR,
    Int8ReferenceLinear,
    Int8Weights,
    absmax_scales,
    calibrate,
    calibrate_layers,
    int8_layers,
    quantize,
    quantize_input,
    reference_linear,
    smoothing_factors,
    tensor_scale,
)
from stages.modeling import load_qa_model
from safetensors.torch import load_file


def test_scales_map_each_rows_absmax_to_127():
    t = torch.tensor([[0.5, -2.54, 1.0], [0.0, 0.0, 0.0], [3.0, 0.1, -0.2]])
    scales = absmax_scales(t)
    assert torch.allclose(scales, torch.tensor([2.54 / 127, 1.0, 3.0 / 127]))
    q = quantize(t, scales)
    assert q.dtype == torch.int8
    assert q[0].tolist() == [25, -127, 50]  # 0.5 / 0.02 = 25, 1.0 / 0.02 = 50
    assert q[1].tolist() == [0, 0, 0]  # an all-zero row stays zero, no division by zero
    assert q[2].tolist() == [127, 4, -8]  # 0.1 / (3/127) = 4.23 -> 4, -0.2 / (3/127) = -8.47 -> -8


def test_rounding_is_to_nearest_even_and_clamps_to_symmetric_range():
    scales = torch.ones(1)
    assert quantize(torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5]]), scales).tolist() == [[0, 2, 2, 0, -2]]
    # Values past the scale's range clamp to +-127, never -128.
    assert quantize(torch.tensor([[300.0, -300.0, 127.4, -127.6]]), scales).tolist() == [[127, -127, 127, -127]]


def test_a_static_scale_quantizes_the_whole_tensor_and_clamps_what_calibration_did_not_see():
    calibration = torch.tensor([[0.5, -2.54], [1.0, 0.2]])
    scale = tensor_scale(calibration)
    assert scale == pytest.approx(2.54 / 127) and tensor_scale(torch.zeros(3, 2)) == 1.0
    later = torch.tensor([[0.5, 1.0], [5.0, -0.01]])  # 5.0 is past the calibrated range
    multipliers = torch.full((2,), 1 / scale)
    assert quantize_input(later, multipliers).tolist() == [[25, 50], [127, 0]]


def test_smoothing_moves_an_outlier_channel_into_the_weight_and_keeps_the_product():
    x_absmax = torch.tensor([1.0, 100.0, 0.0, 4.0])  # channel 1 an outlier, channel 2 never active
    weight = torch.tensor([[1.0, 0.5, 2.0, 0.0], [0.5, 0.25, 1.0, 0.0]])  # column 3 pruned away
    s = smoothing_factors(x_absmax, weight, strength=0.5)
    assert torch.allclose(s[:2], torch.tensor([1.0, 10 / 0.5**0.5]))  # sqrt(1) / sqrt(1), sqrt(100) / sqrt(0.5)
    assert s[2] == 1 and s[3] == 1  # nothing to balance: left alone
    assert torch.equal(smoothing_factors(x_absmax, weight, strength=0.0)[:2], 1 / torch.tensor([1.0, 0.5]))
    x = torch.randn(5, 4)
    assert torch.allclose((x / s) @ (weight * s).t(), x @ weight.t(), atol=1e-5)


def test_quantization_keeps_the_2of4_zeros():
    weight = torch.randn(8, 16) * torch.tensor([0.0, 1.0, 0.0, 1.0]).repeat(8, 4)
    q = quantize(weight, absmax_scales(weight))
    assert bool((q.reshape(8, -1, 4) == 0).sum(-1).ge(2).all())


def test_reference_matches_integer_arithmetic_exactly():
    torch.manual_seed(0)
    x, linear = torch.randn(5, 64), nn.Linear(64, 6)
    smoothing, input_scale = torch.rand(64) + 0.5, 0.03
    weights = Int8Weights(linear, smoothing, input_scale)
    smoothed = linear.weight.detach() * smoothing
    w_scales = absmax_scales(smoothed)
    assert torch.equal(weights.weight_q, quantize(smoothed, w_scales))
    x_q = (x * (1 / (smoothing * input_scale))).round().clamp(-127, 127).long()
    integer = x_q @ weights.weight_q.long().t()  # what the kernel accumulates in int32
    expected = integer.double() * (w_scales * input_scale).double()[None, :] + linear.bias.detach().double()
    got = reference_linear(x, weights, linear.bias.detach()).double()
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert integer.abs().max() <= INT8_MAX * INT8_MAX * 64
    assert relative_error(linear(x).detach(), got) < 2e-2  # and it is the layer, to int8 precision


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
    calibrated = calibrate(model, linears, {"input_ids": x}, strength=0.5)
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
    calibrated = calibrate(model, linears, {"input_ids": x}, strength=0.5)
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
    from stages.attention import fuse_qkv

    model = load_qa_model(str(tiny_model)).eval()
    inputs = {"input_ids": torch.randint(0, 1000, (3, 20))}
    attention = model.bert.encoder.layer[1].attention.self
    names = [f"bert.encoder.layer.1.attention.self.{part}" for part in ("query", "key", "value")]
    parts = [attention.query, attention.key, attention.value]
    grouped = calibrate(model, dict(zip(names, parts)), inputs, strength=0.8)
    fuse_qkv(model)
    fused_name = "bert.encoder.layer.1.attention.self.qkv"
    smoothing, scale, error = calibrate(model, {fused_name: attention.qkv}, inputs, strength=0.8)[fused_name]
    assert torch.equal(smoothing, grouped[names[0]][0]) and scale == grouped[names[0]][1]
    assert 0 < error <= max(e for _, _, e in grouped.values())
    x = torch.randn(10, attention.qkv.in_features) * 3
    separate = torch.cat([Int8ReferenceLinear(part, smoothing, scale)(x) for part in parts], dim=-1)
    assert torch.equal(Int8ReferenceLinear(attention.qkv, smoothing, scale)(x), separate)


def test_stage_int8_without_gpu_checks_accuracy_and_emulates_the_kernel(params, tiny_model, tmp_path):
    from stages.prune import prune

    params["accelerate"]["precision"] = "int8"
    (tmp_path / "pruned").mkdir()
    prune(params, tiny_model, tmp_path / "pruned")  # magnitude 2:4: every encoder Linear can take the kernel
    out = tmp_path / "accelerated"
    out.mkdir()
    metrics = accelerate.run(params, tmp_path / "pruned", out)
    assert metrics["precision"] == "int8" and metrics["layers_2of4"] == 0
    assert metrics["reason"] == "dense: no CUDA device; int8 layers emulated exactly (float64) so evaluate scores them"
    assert metrics["int8"]["calibration"] == "16 x 128 random tokens"
    assert metrics["int8"]["layers_checked"] == 8  # 2 layers x (fused q/k/v, attention out, FFN in, FFN out)
    plan = json.loads((out / accelerate.PLAN_FILE).read_text())
    assert set(plan["int8_layer_error"]) == set(plan["layers"])
    assert max(plan["int8_layer_error"].values()) == metrics["int8"]["worst_error"] > 0
    on_int8 = {name for name, entry in plan["layers"].items() if entry["precision"] == "int8"}
    assert on_int8 == {name for name, error in plan["int8_layer_error"].items() if error <= MAX_LAYER_ERROR}
    assert all(plan["layers"][name]["input_scale"] > 0 for name in on_int8)
    smoothing = load_file(str(out / accelerate.SMOOTHING_FILE))
    assert set(smoothing) == on_int8 and all(bool((s > 0).all()) for s in smoothing.values())

    # The loaded artifact computes the int8 math on those layers: close to the float model, not equal.
    model = accelerate.load_accelerated(out, torch.device("cpu"), torch.float32)
    swapped = {name: module for name, module in model.named_modules() if isinstance(module, Int8ReferenceLinear)}
    assert set(swapped) == on_int8 and swapped
    for name, module in swapped.items():
        expected = 1 / (smoothing[name] * plan["layers"][name]["input_scale"])
        assert torch.equal(module.weights.multipliers, expected)
    plain = load_qa_model(str(out)).eval()
    input_ids = torch.randint(0, plain.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = plain(input_ids=input_ids).start_logits, model(input_ids=input_ids).start_logits
    assert 0 < relative_error(ref, got) < 0.05
    bench, _ = benchmark.run(params, tmp_path / "pruned", out)
    assert bench["note"] == "accelerated computes its int8 layers in a float64 emulation here: not a speed figure"


def test_int8_reference_linear_is_the_kernel_math():
    torch.manual_seed(0)
    linear = nn.Linear(32, 16)
    x = torch.randn(3, 5, 32)
    smoothing = torch.rand(32) + 0.5
    emulated = Int8ReferenceLinear(linear, smoothing, tensor_scale(x / smoothing))
    expected = reference_linear(x.reshape(-1, 32), Int8Weights(linear, smoothing, tensor_scale(x / smoothing)),
                                linear.bias)
    assert torch.equal(emulated(x), expected.reshape(3, 5, 16))
    assert 0 < relative_error(linear(x).detach(), emulated(x)) < 2e-2


def test_int8_sparse_linear_folds_both_scales_and_the_bias_into_one_kernel_call(monkeypatch):
    """Int8SparseLinear's arithmetic on a CPU: the cuSPARSELt calls are replaced by their definition."""
    from stages.sparse_engine import Int8SparseLinear

    calls = []

    def cslt_sparse_mm(packed, dense_t, alpha, bias, out_dtype, transpose_result, alg_id):
        calls.append({"input_dtype": dense_t.dtype, "out_dtype": out_dtype, "alg_id": alg_id})
        acc = (packed.double() @ dense_t.double()).t()  # int32-exact; transpose_result: (tokens, out)
        return (acc * alpha.double() + bias.double()).to(out_dtype)

    monkeypatch.setattr(torch, "_cslt_compress", lambda weight: weight.clone())
    monkeypatch.setattr(torch, "_cslt_sparse_mm", cslt_sparse_mm)
    torch.manual_seed(0)
    linear = nn.Linear(32, 16)
    x = torch.randn(2, 7, 32)  # 14 tokens: padded to 16 for the kernel, cut back after
    smoothing = torch.rand(32) + 0.5
    scale = tensor_scale(x / smoothing)
    module = Int8SparseLinear(linear, {64: 3}, keep_dense=False, smoothing=smoothing, input_scale=scale)
    reference = Int8ReferenceLinear(linear, smoothing, scale)
    assert module.weight is None and torch.equal(module.packed, reference.weights.weight_q)
    assert torch.equal(module.alpha, reference.weights.alpha)
    with torch.no_grad():
        got = module(x)
        expected = reference(x)
    assert calls == [{"input_dtype": torch.int8, "out_dtype": torch.float32, "alg_id": 3}]
    assert got.shape == (2, 7, 16) and torch.allclose(got, expected, atol=1e-5)
