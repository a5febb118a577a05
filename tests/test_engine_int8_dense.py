"""engine/int8_dense.py on a CPU (torch._int_mm runs there too): the int8 dense Linear computes the
int8 2:4 layers' math exactly, close to the float Linear, at any token count."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.common import relative_error
from engine.int8_dense import INT_MM_MIN_ROWS, Int8DenseConfig, Int8DenseLinear
from engine.kernels import Int8Weights, named, reference_linear, smoothing_factors, swap_linears, tensor_scale


def calibrated(linear: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """SmoothQuant factors (strength 0.8) and the static input scale, as calibration makes them."""
    x2d = x.reshape(-1, linear.in_features)
    smoothing = smoothing_factors(x2d.abs().amax(dim=0), linear.weight, 0.8)
    return smoothing, tensor_scale(x2d / smoothing)


@pytest.mark.parametrize("tokens", [5, INT_MM_MIN_ROWS, 40])  # fewer rows than torch._int_mm takes on a GPU: padded
@pytest.mark.parametrize("bias", [True, False])
def test_int8_dense_linear_is_the_int8_math_and_close_to_float(tokens, bias):
    generator = torch.Generator().manual_seed(tokens)
    linear = nn.Linear(64, 48, bias=bias)
    x = torch.randn(tokens, 64, generator=generator) * torch.linspace(0.1, 4, 64)  # uneven channels, as activations
    smoothing, input_scale = calibrated(linear, x)
    layer = Int8DenseLinear(linear, smoothing, input_scale)
    with torch.no_grad():
        out = layer(x.reshape(1, tokens, 64))
        exact = reference_linear(x, Int8Weights(linear, smoothing, input_scale), linear.bias)
        float_out = linear(x)
    assert out.shape == (1, tokens, 48) and out.dtype == x.dtype
    assert torch.allclose(out.reshape(tokens, 48), exact, rtol=1e-5, atol=1e-5)  # int32 sums are exact
    assert relative_error(float_out, out.reshape(tokens, 48)) < 2e-2  # what int8 costs


def test_int8_dense_config_swaps_through_the_engines_one_call():
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16))
    config = Int8DenseConfig(torch.ones(32), 0.05)
    swap_linears(model, lambda name: config, named({"0"}))
    assert isinstance(model[0], Int8DenseLinear) and type(model[2]) is nn.Linear
    assert model[0].weight_t.dtype == torch.int8 and model[0].weight_t.shape == (32, 32)
    assert model[0].weight_t.stride() == (1, 32)  # column-major, as torch._int_mm takes it
