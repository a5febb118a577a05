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
    absmax_scales,
    calibrate,
    int8_layers,
    layer_error,
    quantize,
    reference_linear,
    tensor_scale,
)
from stages.modeling import load_qa_model


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
    assert quantize(later, torch.tensor(scale)).tolist() == [[25, 50], [127, 0]]


def test_quantization_keeps_the_2of4_zeros():
    weight = torch.randn(8, 16) * torch.tensor([0.0, 1.0, 0.0, 1.0]).repeat(8, 4)
    q = quantize(weight, absmax_scales(weight))
    assert bool((q.reshape(8, -1, 4) == 0).sum(-1).ge(2).all())


def test_reference_matches_integer_arithmetic_exactly():
    torch.manual_seed(0)
    x, weight, bias = torch.randn(5, 64), torch.randn(6, 64), torch.randn(6)
    w_scales = absmax_scales(weight)
    w_q = quantize(weight, w_scales)
    x_scale = tensor_scale(x)
    x_q = (x.double() / x_scale).round().clamp(-127, 127).long()
    integer = x_q @ w_q.long().t()  # what the kernel accumulates in int32
    expected = integer.double() * x_scale * w_scales.double()[None, :] + bias.double()
    assert torch.allclose(reference_linear(x, w_q, w_scales, x_scale, bias).double(), expected, rtol=1e-6, atol=1e-6)
    assert integer.abs().max() <= INT8_MAX * INT8_MAX * 64


def test_int8_error_is_small_for_gaussian_and_large_for_outlier_activations():
    torch.manual_seed(0)
    linear = nn.Linear(256, 128)
    gaussian = torch.randn(32, 256)
    assert 1e-3 < layer_error(linear, gaussian, tensor_scale(gaussian)) < 2e-2
    # One huge channel (as in BERT's outlier dimensions) crushes every other channel into a few
    # int8 steps, so the layer must stay fp16.
    outliers = gaussian.clone()
    outliers[:, 7] = 500.0
    errors = {"gaussian": layer_error(linear, gaussian, tensor_scale(gaussian)),
              "outliers": layer_error(linear, outliers, tensor_scale(outliers))}
    assert errors["outliers"] > MAX_LAYER_ERROR
    assert int8_layers(errors) == {"gaussian": True, "outliers": False}


def test_calibration_scales_each_layer_by_its_own_input_and_removes_its_hooks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    model.forward = lambda input_ids: nn.Sequential.forward(model, input_ids)  # QA models take input_ids=
    linears = {"0": model[0], "2": model[2]}
    x = torch.randn(4, 16)
    calibrated = calibrate(model, linears, {"input_ids": x})
    assert set(calibrated) == {"0", "2"}
    assert calibrated["0"][0] == tensor_scale(x)
    assert calibrated["2"][0] == tensor_scale(torch.relu(model[0](x)))
    assert all(0 < error < 0.05 for _, error in calibrated.values())
    assert not model[0]._forward_hooks and not model[2]._forward_hooks


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
    assert metrics["int8"]["layers_checked"] == 12  # 2 layers x (q, k, v, attention out, FFN in, FFN out)
    plan = json.loads((out / accelerate.PLAN_FILE).read_text())
    assert set(plan["int8_layer_error"]) == set(plan["layers"])
    assert max(plan["int8_layer_error"].values()) == metrics["int8"]["worst_error"] > 0
    on_int8 = {name for name, entry in plan["layers"].items() if entry["precision"] == "int8"}
    assert on_int8 == {name for name, error in plan["int8_layer_error"].items() if error <= MAX_LAYER_ERROR}
    assert all(plan["layers"][name]["input_scale"] > 0 for name in on_int8)

    # The loaded artifact computes the int8 math on those layers: close to the float model, not equal.
    model = accelerate.load_accelerated(out, torch.device("cpu"), torch.float32)
    swapped = {name: module for name, module in model.named_modules() if isinstance(module, Int8ReferenceLinear)}
    assert set(swapped) == on_int8 and swapped
    assert all(module.input_scale == plan["layers"][name]["input_scale"] for name, module in swapped.items())
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
    emulated = Int8ReferenceLinear(linear, tensor_scale(x))
    scales = absmax_scales(linear.weight)
    expected = reference_linear(x.reshape(-1, 32), quantize(linear.weight, scales), scales, tensor_scale(x), linear.bias)
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
    scale = tensor_scale(x)
    module = Int8SparseLinear(linear, {64: 3}, keep_dense=False, input_scale=scale)
    assert module.weight is None and module.packed.dtype == torch.int8
    assert torch.equal(module.alpha, module.weight_scales * scale)
    with torch.no_grad():
        got = module(x)
        expected = Int8ReferenceLinear(linear, scale)(x)
    assert calls == [{"input_dtype": torch.int8, "out_dtype": torch.float32, "alg_id": 3}]
    assert got.shape == (2, 7, 16) and torch.allclose(got, expected, atol=1e-5)
