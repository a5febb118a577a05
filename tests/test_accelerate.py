"""The accelerate stage on a CPU: a dense plan with its reason, and the int8 check with the kernel's math emulated."""
from __future__ import annotations

import torch
from safetensors.torch import load_file

from engine.adapters import fuse_qkv
from engine.calibration import MAX_LAYER_ERROR
from engine.common import relative_error
from engine.config import EngineConfig
from engine.kernels import Int8ReferenceLinear
from engine.models import load_qa_model
from engine.plan import PLAN_FILE, SMOOTHING_FILE, Plan, load_accelerated
from stages import accelerate, benchmark
from stages.prune import prune


def test_stage_without_gpu_writes_a_dense_plan_with_its_reason(params, tiny_model, tmp_path):
    out = tmp_path / "accelerated"
    out.mkdir()
    metrics = accelerate.run(params, tiny_model, out)
    assert (metrics["backend"], metrics["reason"]) == ("dense", "dense: no CUDA device")
    assert metrics["layers_2of4"] == 0 and metrics["output_relative_error"] is None
    plan = Plan.load(out / PLAN_FILE)
    assert plan.layers and all(layer.reason == "dense: no CUDA device" for layer in plan.layers.values())
    assert any(name.endswith("attention.self.qkv") for name in plan.layers)  # planned on the fused model
    assert plan.engine == EngineConfig.from_env().record()  # the configuration it was made under
    loaded = load_accelerated(out, torch.device("cpu"), torch.float32)
    reference = fuse_qkv(load_qa_model(str(tiny_model)))
    assert loaded.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), reference.state_dict().values()))


def test_stage_int8_without_gpu_checks_accuracy_and_emulates_the_kernel(params, tiny_model, tmp_path):
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
    plan = Plan.load(out / PLAN_FILE)
    assert set(plan.int8_layer_error) == set(plan.layers)
    assert max(plan.int8_layer_error.values()) == metrics["int8"]["worst_error"] > 0
    on_int8 = {name for name, layer in plan.layers.items() if layer.precision == "int8"}
    assert on_int8 == {name for name, error in plan.int8_layer_error.items() if error <= MAX_LAYER_ERROR}
    assert all(plan.layers[name].input_scale > 0 for name in on_int8)
    smoothing = load_file(str(out / SMOOTHING_FILE))
    assert set(smoothing) == on_int8 and all(bool((s > 0).all()) for s in smoothing.values())

    # The loaded artifact computes the int8 math on those layers: close to the float model, not equal.
    model = load_accelerated(out, torch.device("cpu"), torch.float32)
    swapped = {name: module for name, module in model.named_modules() if isinstance(module, Int8ReferenceLinear)}
    assert set(swapped) == on_int8 and swapped
    for name, module in swapped.items():
        expected = 1 / (smoothing[name] * plan.layers[name].input_scale)
        assert torch.equal(module.weights.multipliers, expected)
    plain = load_qa_model(str(out)).eval()
    input_ids = torch.randint(0, plain.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = plain(input_ids=input_ids).start_logits, model(input_ids=input_ids).start_logits
    assert 0 < relative_error(ref, got) < 0.05
    bench, _ = benchmark.run(params, tmp_path / "pruned", out)
    assert bench["note"] == "accelerated computes its int8 layers in a float64 emulation here: not a speed figure"
