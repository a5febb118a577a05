"""Issue 30, the fp8 2:4 lever's accuracy side: per Linear of a trained 2:4 model, the relative
output error on the accelerate stage's calibration batch of
- int8 as the engine calibrates it (SmoothQuant smoothing, one static input scale, per-channel
  weight scales; after a GELU first without smoothing: engine.calibration.calibrate_int8), and
- fp8 e4m3 as cuSPARSELt 0.8 could run it 2:4: one static scale for the input and one for the
  whole weight (a per-channel scale vector is "not supported" for fp8 there).
The layers over engine.calibration.MAX_LAYER_ERROR stay fp16 2:4 in the plan; fp8 2:4 is worth
building if it passes where int8 does not.
    PYTHONPATH=. python docs/results/2026-12-06-fp8-vs-int8-errors.py [MODEL_DIR [FEATURES_DIR [PARAMS]]]
    (defaults: models/sparse, features, params.yaml, after `dvc repro`)
"""
import argparse
import json
from pathlib import Path

import torch

from engine.adapters import encoder_linears, gelu_pairs
from engine.calibration import MAX_LAYER_ERROR, calibrate_int8, layer_inputs
from engine.common import relative_error
from engine.kernels import FP8_MAX, tensor_scale, to_fp8
from engine.plan import inference_model
from stages.accelerate import calibration_inputs
from stages.params import load_params


def fp8_error(linear: torch.nn.Linear, x: torch.Tensor) -> float:
    """Relative error of x @ W.t() + b with x and W each in e4m3 under one scale, vs float32."""
    x2d = x.reshape(-1, linear.in_features).float()
    weight = linear.weight.detach().float()
    x_scale, w_scale = tensor_scale(x2d, FP8_MAX), tensor_scale(weight, FP8_MAX)
    bias = 0 if linear.bias is None else linear.bias.detach().float()
    exact = x2d @ weight.t() + bias
    quantized = (to_fp8(x2d, x_scale).float() @ to_fp8(weight, w_scale).float().t()) * (x_scale * w_scale) + bias
    return relative_error(exact, quantized)


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", nargs="?", type=Path, default=Path("models/sparse"))
    parser.add_argument("features_dir", nargs="?", type=Path, default=Path("features"))
    parser.add_argument("params_file", nargs="?", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    model_dir, features_dir, params_file = args.model_dir, args.features_dir, args.params_file
    params = load_params(params_file)
    device = torch.device("cpu")
    model = inference_model(model_dir, device, torch.float32)
    linears = encoder_linears(model)
    inputs, source = calibration_inputs(params, model_dir, features_dir, model.config.vocab_size, device)
    unsmoothed = frozenset(second for first, second in gelu_pairs(model).items())
    int8 = {name: error for name, (_, _, error) in
            calibrate_int8(model, linears, inputs, params["accelerate.int8_smoothing"], unsmoothed).items()}
    captured = layer_inputs(model, linears, inputs)
    rows = {name: {"int8": round(int8[name], 5), "fp8": round(fp8_error(linears[name], captured[name]), 5)}
            for name in linears}
    passing = {kind: sum(row[kind] <= MAX_LAYER_ERROR for row in rows.values()) for kind in ("int8", "fp8")}
    print(json.dumps({"model": str(model_dir), "calibration": source, "max_layer_error": MAX_LAYER_ERROR,
                      "layers": len(rows), "passing": passing,
                      "fp8_only": [n for n, r in rows.items() if r["fp8"] <= MAX_LAYER_ERROR < r["int8"]],
                      "int8_only": [n for n, r in rows.items() if r["int8"] <= MAX_LAYER_ERROR < r["fp8"]],
                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
