"""What calibration looks at: each Linear's input in one forward, and the int8 and fp8 input scales
that come from it.

int8 (SmoothQuant): one smoothing per group of Linears that read the same input (a BERT layer's
query, key and value) and one static input scale, so one quantized input serves them all; a layer
keeps int8 only when its output on the calibration batch stays within MAX_LAYER_ERROR of the float
layer's. Layers named `unsmoothed` (the ones after a GELU) first try no smoothing, one scale for
every channel (clipped where that errs less), and keep it where every layer of the group passes so:
the Linear before the GELU can then quantize for them in its kernel (kernels.INT8_GELU).
fp8: one static scale per input, from one forward of the benchmark's random tokens.
"""
from __future__ import annotations

import torch
from torch import nn

from .common import relative_error
from .kernels import FP8_MAX, Int8Weights, reference_linear, smoothing_factors, tensor_scale

# A layer keeps int8 when its output on the calibration batch differs from the float layer's by
# at most this relative (Frobenius) error; fp16 rounding alone is ~5e-4.
MAX_LAYER_ERROR = 2e-2
# The int8 ranges an unsmoothed input tries, as fractions of its largest |value| (calibrate_layers).
CLIP_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


@torch.inference_mode()
def layer_inputs(model: nn.Module, linears: dict[str, nn.Linear],
                 inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each Linear's input in one forward of `inputs` (what calibration looks at)."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [linear.register_forward_hook(lambda module, args, out, name=name: captured.__setitem__(name, args[0]))
             for name, linear in linears.items()]
    try:
        model(**inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def group_by_input(captured: dict[str, torch.Tensor]) -> list[list[str]]:
    """The names of layer_inputs' result grouped by the tensor they read, in forward order: a BERT
    layer's query, key and value read one."""
    groups: dict[int, list[str]] = {}
    for name, tensor in captured.items():
        groups.setdefault(id(tensor), []).append(name)
    return list(groups.values())


def layer_errors(linears: dict[str, nn.Linear], x2d: torch.Tensor, smoothing: torch.Tensor,
                 input_scale: float) -> dict[str, float]:
    """Per Linear, the relative error of its int8 output on x2d vs its float output."""
    errors = {}
    for name, linear in linears.items():
        bias = None if linear.bias is None else linear.bias.detach().float()
        exact = x2d @ linear.weight.detach().float().t() + (0 if bias is None else bias)
        errors[name] = relative_error(exact, reference_linear(x2d, Int8Weights(linear, smoothing, input_scale), bias))
    return errors


def calibrate_layers(linears: dict[str, nn.Linear], inputs: torch.Tensor,
                     strength: float | None) -> dict[str, tuple[torch.Tensor, float, float]]:
    """Per Linear, (smoothing factors, input scale, relative error of the int8 layer vs the float
    layer), for Linears that all read `inputs` (any leading shape): one smoothing (from the largest
    |w| of each input channel over all their weights) and one scale for all of them.

    strength None: no smoothing (all ones), and the input scale that gives the smallest worst error
    among CLIP_RATIOS of the largest |value|: without smoothing's evening out, clipping the rare
    largest values buys a finer int8 step for all the others."""
    first = next(iter(linears.values()))
    x2d = inputs.reshape(-1, first.in_features).float()
    if strength is None:
        smoothing = torch.ones(first.in_features, device=x2d.device)
        scales = [tensor_scale(x2d) * ratio for ratio in CLIP_RATIOS]
    else:
        weights = torch.cat([linear.weight.detach() for linear in linears.values()])
        smoothing = smoothing_factors(x2d.abs().amax(dim=0), weights, strength)
        scales = [tensor_scale(x2d / smoothing)]
    errors = {scale: layer_errors(linears, x2d, smoothing, scale) for scale in scales}
    input_scale = min(scales, key=lambda scale: max(errors[scale].values()))
    return {name: (smoothing, input_scale, error) for name, error in errors[input_scale].items()}


@torch.inference_mode()
def calibrate_int8(model: nn.Module, linears: dict[str, nn.Linear], inputs: dict[str, torch.Tensor],
                   strength: float, unsmoothed: frozenset[str] = frozenset(),
                   max_error: float = MAX_LAYER_ERROR) -> dict[str, tuple[torch.Tensor, float, float]]:
    """calibrate_layers on each group of Linears that read the same input, from one float forward
    of a calibration batch; a group all in `unsmoothed` without smoothing where all its errors stay
    within max_error."""
    captured = layer_inputs(model, linears, inputs)
    calibrated = {}
    for names in group_by_input(captured):
        group = {name: linears[name] for name in names}
        if unsmoothed.issuperset(names):
            plain = calibrate_layers(group, captured[names[0]], None)
            if all(error <= max_error for _, _, error in plain.values()):
                calibrated.update(plain)
                continue
        calibrated.update(calibrate_layers(group, captured[names[0]], strength))
    return calibrated


def int8_layers(errors: dict[str, float], max_error: float = MAX_LAYER_ERROR) -> dict[str, bool]:
    """Per layer, whether it may run int8 (its error within max_error)."""
    return {name: error <= max_error for name, error in errors.items()}


def fp8_input_scales(model: nn.Module, linears: dict[str, nn.Linear],
                     inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per Linear, the static fp8 scale of its input in one forward of `inputs`."""
    return {name: tensor_scale(x, FP8_MAX) for name, x in layer_inputs(model, linears, inputs).items()}
