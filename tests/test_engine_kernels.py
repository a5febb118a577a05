"""engine/kernels.py: which device runs 2:4, the int8 and fp8 numbers, the Linears, and the one swap call."""
from __future__ import annotations

import importlib
import sys

import pytest
import torch
from torch import nn

from engine.kernels import (
    FP8,
    FP8_MAX,
    INT8_MAX,
    TOKEN_ALIGNMENT,
    Fp8Config,
    Fp8Linear,
    Int8ReferenceConfig,
    Int8ReferenceLinear,
    Int8Weights,
    Kernel,
    SparseConfig,
    SparseLinear,
    absmax_scales,
    bucket_for,
    fp8_available,
    named,
    quantize,
    quantize_input,
    reference_linear,
    smoothing_factors,
    sparse_backend,
    swap_linears,
    tensor_scale,
    to_fp8,
)
from engine.common import relative_error


@pytest.mark.parametrize("capability, cusparselt, backend, reason", [
    (None, False, None, "dense: no CUDA device"),
    ((7, 5), True, None, "dense: compute capability 7.5 < 8.0 has no 2:4 sparse tensor cores"),
    ((8, 0), False, None, "dense: compute capability 8.0, but this torch build has no cuSPARSELt"),
    ((8, 0), True, "cusparselt", "compute capability 8.0: cuSPARSELt 2:4 kernels"),
    ((8, 6), True, "cusparselt", "compute capability 8.6: cuSPARSELt 2:4 kernels"),
    # Hopper: the tutorial's forced CUTLASS raises there; cuSPARSELt runs.
    ((9, 0), True, "cusparselt", "compute capability 9.0: cuSPARSELt 2:4 kernels"),
])
def test_backend_by_compute_capability(capability, cusparselt, backend, reason):
    assert sparse_backend(capability, cusparselt) == (backend, reason)


def test_bucket_selection_takes_the_smallest_bucket_that_holds_the_tokens():
    buckets = [1536, 6144, 24576]
    assert bucket_for(1, buckets) == 1536
    assert bucket_for(1536, buckets) == 1536
    assert bucket_for(1537, buckets) == 6144
    assert bucket_for(24576, buckets) == 24576
    assert bucket_for(10**6, buckets) == 24576  # past the largest: the largest


def test_swap_linears_puts_each_kind_in_place_and_dense_buckets_match_the_linear(monkeypatch):
    monkeypatch.setattr(torch, "_cslt_compress", lambda weight: weight.clone())  # packing is CUDA-only
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU()), torch.nn.Linear(16, 4))
    x = torch.randn(3, 5, 8)
    expected = model(x)
    configs = {"0.0": SparseConfig({64: None}), "1": SparseConfig({64: None}, True, torch.ones(16), 0.05)}
    swap_linears(model, configs.__getitem__, named(configs))
    assert type(model[0][0]) is SparseLinear and type(model[1]) is SparseLinear
    assert model[0][0].packed is None and model[0][0].packed_int8 is None  # dense everywhere: only the weight
    assert model[1].packed_int8.dtype == torch.int8 and model[1].alpha.shape == (4,)  # keep_all: every kernel
    assert torch.allclose(model[1].multipliers, torch.full((16,), 20.0))
    assert torch.allclose(model(x), expected)  # every bucket dense: the plain Linear's result


def test_swap_linears_gives_layers_calibrated_together_one_multipliers_tensor(monkeypatch):
    monkeypatch.setattr(torch, "_cslt_compress", lambda weight: weight.clone())  # packing is CUDA-only
    model = torch.nn.ModuleDict({n: torch.nn.Linear(8, 8) for n in ("query", "key", "value", "out")})
    together, alone = (torch.linspace(1, 2, 8), 0.1), (torch.linspace(1, 3, 8), 0.1)
    calibration = {"query": together, "key": (together[0].clone(), 0.1), "value": together, "out": alone}
    swap_linears(model, lambda name: SparseConfig({64: Kernel("int8", 0)}, False, *calibration[name]), named(model))
    assert model["query"].multipliers is model["key"].multipliers is model["value"].multipliers
    assert model["out"].multipliers is not model["query"].multipliers
    assert "multipliers" in dict(model["key"].named_buffers())  # still a buffer: moves with .to(device)


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


@pytest.fixture
def triton_on_cpu(monkeypatch):
    """engine/quantize_kernel.py imported under TRITON_INTERPRET=1: its Triton kernel runs on CPU tensors."""
    pytest.importorskip("triton")  # requirements.txt installs it on Linux x86_64, where CI runs
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delitem(sys.modules, "engine.quantize_kernel", raising=False)
    from engine import kernels

    kernels._direct_quantize.cache_clear()
    yield importlib.import_module("engine.quantize_kernel")
    kernels._direct_quantize.cache_clear()
    sys.modules.pop("engine.quantize_kernel", None)


def test_the_triton_quantization_gives_quantize_inputs_integers(triton_on_cpu):
    """Value for value: ties to even, clamping at +-127, fp16 and float32 inputs, a size that is not a
    multiple of the kernel's block, 3-D input."""
    generator = torch.Generator().manual_seed(0)
    for shape, dtype in (((5, 16), torch.float16), ((3, 700, 48), torch.float32), ((1, 4), torch.float32)):
        x = (torch.randn(shape, generator=generator) * 60).to(dtype)
        x.view(-1, shape[-1])[0, :4] = torch.tensor([0.5, 1.5, -2.5, 1e4])  # ties, and past the range
        multipliers = torch.rand(shape[-1], generator=generator) + 0.5
        multipliers[:4] = 1.0
        got = triton_on_cpu.quantize_input(x, multipliers)
        assert got.dtype == torch.int8 and got.shape == x.shape
        assert torch.equal(got, quantize_input(x, multipliers))
    assert triton_on_cpu.quantize_input(torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, 126.5, 127.5, -400.0]]),
                                        torch.ones(8)).tolist() == [[0, 2, 2, 0, -2, 126, 127, -127]]


def test_an_int8_layer_run_eagerly_on_a_gpu_quantizes_with_the_triton_kernel(triton_on_cpu, monkeypatch):
    from engine import kernels

    monkeypatch.setattr(kernels, "_eager_on_gpu", lambda x: True)  # the CPU plays the GPU
    assert kernels._direct_quantize() is triton_on_cpu.quantize_input
    x, multipliers = torch.randn(7, 32) * 50, torch.rand(32) + 0.5
    assert torch.equal(kernels.quantize_for_kernel(x, multipliers), quantize_input(x, multipliers))


def test_without_triton_an_eager_int8_layer_quantizes_with_torch_ops(monkeypatch):
    from engine import kernels

    monkeypatch.setitem(sys.modules, "triton", None)  # import triton fails
    monkeypatch.delitem(sys.modules, "engine.quantize_kernel", raising=False)
    kernels._direct_quantize.cache_clear()
    try:
        assert kernels._direct_quantize() is quantize_input
    finally:
        kernels._direct_quantize.cache_clear()


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


def fake_cslt_sparse_mm(calls: list):
    """torch._cslt_sparse_mm by its definition (a CPU stand-in), recording each call's kind."""

    def cslt_sparse_mm(packed, dense_t, bias=None, alpha=None, out_dtype=None, transpose_result=False, alg_id=0):
        calls.append({"input_dtype": dense_t.dtype, "out_dtype": out_dtype, "alg_id": alg_id})
        acc = (packed.double() @ dense_t.double()).t()  # int32-exact for int8; transpose_result: (tokens, out)
        out = acc * (1 if alpha is None else alpha.double()) + (0 if bias is None else bias.double())
        return out.to(out_dtype or dense_t.dtype)

    return cslt_sparse_mm


def test_int8_kernel_folds_both_scales_and_the_bias_into_one_kernel_call(monkeypatch):
    """SparseLinear's int8 arithmetic on a CPU: the cuSPARSELt calls are replaced by their definition."""
    calls = []
    monkeypatch.setattr(torch, "_cslt_compress", lambda weight: weight.clone())
    monkeypatch.setattr(torch, "_cslt_sparse_mm", fake_cslt_sparse_mm(calls))
    torch.manual_seed(0)
    linear = nn.Linear(32, 16)
    x = torch.randn(2, 7, 32)  # 14 tokens: padded to 16 for the kernel, cut back after
    smoothing = torch.rand(32) + 0.5
    scale = tensor_scale(x / smoothing)
    module = SparseLinear(linear, {64: Kernel("int8", 3)}, int8=Int8Weights(linear, smoothing, scale))
    reference = Int8ReferenceLinear(linear, smoothing, scale)
    assert module.weight is None and module.packed is None  # only what the int8 kernel needs
    assert torch.equal(module.packed_int8, reference.weights.weight_q)
    assert torch.equal(module.alpha, reference.weights.alpha)
    with torch.no_grad():
        got = module(x)
        expected = reference(x)
    assert calls == [{"input_dtype": torch.int8, "out_dtype": torch.float32, "alg_id": 3}]
    assert got.shape == (2, 7, 16) and torch.allclose(got, expected, atol=1e-5)


def test_each_token_bucket_runs_its_own_kernel_dense_fp16_or_int8(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "_cslt_compress", lambda weight: weight.clone())
    monkeypatch.setattr(torch, "_cslt_sparse_mm", fake_cslt_sparse_mm(calls))
    monkeypatch.setitem(TOKEN_ALIGNMENT, torch.float32, 4)  # float32 stands in for fp16 on a CPU
    torch.manual_seed(0)
    linear = nn.Linear(32, 16)
    smoothing = torch.rand(32) + 0.5
    module = SparseLinear(linear, {16: Kernel("fp16", 5), 64: Kernel("int8", 2), 256: None},
                          int8=Int8Weights(linear, smoothing, 0.05))
    assert module.weight is not None and module.packed is not None and module.packed_int8 is not None
    with torch.no_grad():
        for tokens in (10, 40, 200):
            x = torch.randn(tokens, 32)
            exact = linear(x)
            error = relative_error(exact, module(x))
            assert error < (1e-5 if tokens != 40 else 2e-2)  # int8 rounds; fp16 2:4 and dense are the layer
    assert [(call["input_dtype"], call["alg_id"]) for call in calls] == [(torch.float32, 5), (torch.int8, 2)]


def test_a_batched_input_is_bucketed_by_its_tokens_and_the_dense_bucket_is_the_linear_itself(monkeypatch):
    """(batch, seq, in) counts batch x seq tokens; where the bucket runs dense the layer is exactly
    nn.Linear on the unreshaped input (the eager model's small batches pay no extra host work)."""
    calls = []
    monkeypatch.setattr(torch, "_cslt_compress", lambda weight: weight.clone())
    monkeypatch.setattr(torch, "_cslt_sparse_mm", fake_cslt_sparse_mm(calls))
    monkeypatch.setitem(TOKEN_ALIGNMENT, torch.float32, 4)
    torch.manual_seed(0)
    linear = nn.Linear(32, 16)
    module = SparseLinear(linear, {16: Kernel("fp16", 5), 256: None})
    with torch.no_grad():
        wide = torch.randn(4, 10, 32)  # 40 tokens: the dense bucket
        assert torch.equal(module(wide), linear(wide)) and not calls
        narrow = torch.randn(2, 5, 32)  # 10 tokens: fp16 2:4
        out, exact = module(narrow), linear(narrow)
    assert out.shape == (2, 5, 16) and relative_error(exact, out) < 1e-5
    assert [call["alg_id"] for call in calls] == [5]


def test_fp8_linear_is_the_linear_to_fp8_precision_and_clamps_past_its_scale():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    x = torch.randn(3, 8, 64)
    layer = Fp8Linear(linear, tensor_scale(x, FP8_MAX))
    assert layer.weight_t.dtype == FP8 and layer.weight_t.stride() == (1, 64)  # column-major (in, out)
    with torch.no_grad():
        expected, got = linear(x), layer(x)
    assert got.shape == (3, 8, 32) and got.dtype == x.dtype
    assert 1e-3 < relative_error(expected, got) < 5e-2  # e4m3 keeps 3 mantissa bits
    assert to_fp8(torch.tensor([1000.0, -1000.0]), 1.0).float().tolist() == [448.0, -448.0]


def test_fp8_is_only_offered_on_gpus_with_fp8_tensor_cores():
    assert not fp8_available(torch.device("cpu"))


def test_one_swap_call_builds_each_config_s_module_where_the_filter_accepts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Linear(16, 4))
    first, kept = model[0], model[3]
    configs = {"0": Int8ReferenceConfig(torch.ones(8), 0.02), "2": Fp8Config(0.1), "3": Fp8Config(0.1)}
    swap_linears(model, configs.__getitem__, lambda module, fqn: fqn in configs and module.out_features == 16)
    assert type(model[0]) is Int8ReferenceLinear and type(model[2]) is Fp8Linear and model[3] is kept
    assert torch.equal(model[0].weights.multipliers, torch.full((8,), 50.0))
    assert model[2].input_scale.item() == pytest.approx(0.1)
    x = torch.randn(2, 8)
    with torch.no_grad():
        expected = reference_linear(x, Int8Weights(first, torch.ones(8), 0.02), first.bias)
        assert torch.equal(model[0](x), expected)
        assert 0 < relative_error(first(x), model[0](x)) < 2e-2
