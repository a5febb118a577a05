"""The int8_gelu kernel's wiring: which Linear pairs it joins, the calibration that allows it, the plan's
and the planner's choice of it, and the activation between the pair (engine/kernels.py's module docstring)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.adapters import gelu_pairs
from engine.calibration import MAX_LAYER_ERROR, calibrate_int8
from engine.kernels import INT8_GELU, Int8PassthroughGelu, Int8ReferenceLinear, Kernel, SparseLinear
from engine.models import load_qa_model
from engine.plan import LayerPlan, Plan
from engine.planner import distinct_variants, layer_kernels, variant_kernels
from test_engine_planner import timing

FIRST, SECOND = "bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.0.output.dense"
ACTIVATION = "intermediate_act_fn"  # BertIntermediate's activation (engine/adapters.py's BERT adapter)


def test_gelu_pairs_are_each_layers_intermediate_and_output_linears(tiny_model):
    model = load_qa_model(str(tiny_model))
    pairs = gelu_pairs(model)
    assert pairs == {f"bert.encoder.layer.{i}.intermediate.dense": f"bert.encoder.layer.{i}.output.dense"
                     for i in range(2)}
    setattr(model.get_submodule("bert.encoder.layer.0.intermediate"), ACTIVATION, Int8PassthroughGelu())
    assert gelu_pairs(model) == pairs  # still a GELU there
    setattr(model.get_submodule("bert.encoder.layer.1.intermediate"), ACTIVATION, nn.ReLU())
    assert gelu_pairs(model) == {FIRST: SECOND}  # no GELU, nothing to put in an epilogue


def test_the_passthrough_gelu_is_the_tanh_form_and_leaves_int8_alone():
    x = torch.linspace(-5, 5, 101)
    assert torch.equal(Int8PassthroughGelu()(x), F.gelu(x, approximate="tanh"))
    assert 1e-4 < (F.gelu(x, approximate="tanh") - F.gelu(x)).abs().max() < 1e-3  # the forms differ, slightly
    quantized = torch.arange(-3, 4, dtype=torch.int8)
    assert Int8PassthroughGelu()(quantized) is quantized


def two_linear_model():
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 8))
    model.forward = lambda input_ids: nn.Sequential.forward(model, input_ids)  # QA models take input_ids=
    return model, {"0": model[0], "2": model[2]}


def test_layers_after_a_gelu_stay_unsmoothed_only_where_their_int8_check_passes_so():
    torch.manual_seed(0)
    model, linears = two_linear_model()
    x = torch.randn(64, 16)
    calibrated = calibrate_int8(model, linears, {"input_ids": x}, strength=0.8, unsmoothed=frozenset({"2"}))
    assert torch.equal(calibrated["2"][0], torch.ones(64)) and calibrated["2"][2] <= MAX_LAYER_ERROR
    assert not torch.equal(calibrated["0"][0], torch.ones(16))  # not named: smoothed as before
    # one huge channel into the second layer (its weight column as small, so the output stays): one
    # scale for every channel crushes the others, the check fails unsmoothed, and it is smoothed
    with torch.no_grad():
        model[0].weight[5] *= 400.0
        model[2].weight[:, 5] /= 400.0
    calibrated = calibrate_int8(model, linears, {"input_ids": x}, strength=0.8, unsmoothed=frozenset({"2"}))
    assert not torch.equal(calibrated["2"][0], torch.ones(64))
    assert calibrate_int8(model, linears, {"input_ids": x}, strength=0.8, unsmoothed=frozenset({"2"}),
                          max_error=1.0)["2"][0].eq(1).all()


def fusion_plan(first_kernels=None, second_smoothing=None, first_precision="int8") -> Plan:
    layers = {FIRST: LayerPlan((128, 64), first_precision, first_kernels or {}, input_scale=0.05,
                               smoothing=torch.rand(64) + 0.5),
              SECOND: LayerPlan((64, 128), "int8", {}, input_scale=0.04,
                                smoothing=torch.ones(128) if second_smoothing is None else second_smoothing)}
    return Plan(mode="auto", precision="int8", backend=None, reason="dense: no CUDA device", dtype="float32",
                compiled=False, batch_sizes=[4], seq_length=16, layers=layers, gelu_pairs={FIRST: SECOND})


def test_the_plan_fuses_a_pair_where_both_are_int8_and_the_second_is_unsmoothed():
    assert fusion_plan().gelu_fusions() == {FIRST: SECOND}
    assert fusion_plan().linear_config(FIRST).gelu_scale == pytest.approx(1 / 0.04)
    assert fusion_plan().linear_config(SECOND).gelu_scale is None
    assert fusion_plan(second_smoothing=torch.rand(128) + 0.5).gelu_fusions() == {}
    assert fusion_plan(first_precision="fp16").gelu_fusions() == {}
    # timed on a GPU: only where the first layer runs int8_gelu at some batch size
    assert fusion_plan({4: Kernel("int8", 3)}).gelu_fusions() == {}
    assert fusion_plan({4: Kernel(INT8_GELU, 3)}).gelu_fusions() == {FIRST: SECOND}


def test_applied_on_a_cpu_a_fused_pair_computes_the_tanh_gelu_and_the_int8_math(tiny_model):
    """What the GPU's int8_gelu kernel and the int8 layer after it compute, up to float64 rounding:
    the reference int8 layers around GELU's tanh form."""
    torch.manual_seed(0)
    model = load_qa_model(str(tiny_model)).eval()
    plan = fusion_plan()
    applied = plan.apply(load_qa_model(str(tiny_model)).eval())
    intermediate = applied.get_submodule("bert.encoder.layer.0.intermediate")
    assert isinstance(getattr(intermediate, ACTIVATION), Int8PassthroughGelu)
    assert not isinstance(getattr(applied.get_submodule("bert.encoder.layer.1.intermediate"), ACTIVATION),
                          Int8PassthroughGelu)  # not in the plan's pairs
    assert type(intermediate.dense) is Int8ReferenceLinear
    assert type(applied.get_submodule(SECOND)) is Int8ReferenceLinear
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        first, second = intermediate.dense, applied.get_submodule(SECOND)
        expected = second(F.gelu(first(x), approximate="tanh"))
        assert torch.equal(second(intermediate(x)), expected)
        ids = torch.randint(0, model.config.vocab_size, (2, 16))
        error = (applied(input_ids=ids).start_logits - model(input_ids=ids).start_logits).abs().max()
        assert 0 < error < 0.1  # int8 in two layers of a random model: close, not equal


def test_the_int8_gelu_variant_puts_each_pair_on_int8_with_the_epilogue_on_the_first():
    timings = {FIRST: {4: {"fp16": timing(1.0, a0=0.8), "int8": timing(1.0, a2=0.7, a3=0.6)},
                       64: {"fp16": timing(4.0, a0=3.0), "int8": timing(4.0, a5=2.5)}},
               SECOND: {4: {"fp16": timing(1.0, a0=0.7), "int8": timing(1.0, a1=0.75)},
                        64: {"fp16": timing(4.0, a0=3.0)}}}  # no int8 timing at 64: cannot fuse there
    # the epilogue's own timings pick the first layer's config: alg 2 with it, alg 3 without
    epilogue = {FIRST: {4: timing(1.0, a2=0.62, a3=0.9), 64: timing(4.0, a5=2.6)}}
    per_layer = layer_kernels(timings, "auto")
    assert per_layer[SECOND][4] == Kernel("fp16", 0) and per_layer[FIRST][4] == Kernel("int8", 3)
    variants = variant_kernels("auto", per_layer, timings, unfused=set(), fusions={FIRST: SECOND},
                               epilogue_timings=epilogue)
    assert variants["int8_gelu"][FIRST] == {4: Kernel(INT8_GELU, 2), 64: per_layer[FIRST][64]}
    assert variants["int8_gelu"][SECOND] == {4: Kernel("int8", 1), 64: per_layer[SECOND][64]}
    assert "int8_gelu" in distinct_variants(4, variants) and "int8_gelu" not in distinct_variants(64, variants)
    # nothing to fuse, or the epilogue never timed (no plan cache): no such variant
    assert "int8_gelu" not in variant_kernels("auto", per_layer, timings, unfused=set())
    assert "int8_gelu" not in variant_kernels("auto", per_layer, timings, set(), {FIRST: SECOND}, {})


def test_an_int8_input_where_the_layer_runs_no_int8_kernel_is_an_error():
    layer = SparseLinear(nn.Linear(8, 4), {16: None})
    with pytest.raises(RuntimeError, match="an int8 input at 3 tokens, where this layer runs None"):
        layer(torch.zeros(3, 8, dtype=torch.int8))


def test_measure_times_the_epilogue_on_the_first_layers_and_offers_the_variant(monkeypatch):
    """measure's wiring on a CPU, timings faked: with the plan cache on, the first layer of each fusable
    pair is timed once more as INT8_GELU, and the int8_gelu variant is timed and, faster, chosen."""
    from engine import planner

    model = nn.ModuleDict({"ffn": nn.Linear(768, 3072), "out": nn.Linear(3072, 768)})
    plan = Plan(mode="auto", precision="int8", backend="cusparselt", reason="r", dtype="float16", compiled=True,
                batch_sizes=[4], seq_length=384, gelu_pairs={"ffn": "out"}, layers={
                    "ffn": LayerPlan((3072, 768), "int8", input_scale=0.1, smoothing=torch.rand(768) + 0.5),
                    "out": LayerPlan((768, 3072), "int8", input_scale=0.05, smoothing=torch.ones(3072))})
    by_precision = {"fp16": timing(1.0, a0=0.9), "int8": timing(1.0, a1=0.8), INT8_GELU: timing(1.0, a6=0.85)}
    measured, timed_variants = [], []

    def fake_measure_shapes(layers, batch_sizes, seq_length, dtype, max_alg_id, precision, budget_s, config):
        measured.append((sorted(layers), precision))
        return {f"{linear.out_features}x{linear.in_features}": {4: by_precision[precision]}
                for linear in layers.values()}, []

    graphed_ms = {"dense_masked": 5.0, "per_layer": 4.0, "fp16_2of4": 4.5, "int8_gelu": 3.5}
    # eagerly the int8 layers' extra host work makes fp16 2:4 the fastest
    eager_ms = {"dense_masked": 5.0, "per_layer": 4.7, "fp16_2of4": 4.5, "int8_gelu": 4.8}
    fusions_when_timed = []

    def fake_time_model_variants(model, plan, variants, planned, eager=False):
        timed_variants.append((eager, distinct_variants(4, variants)))
        fusions_when_timed.append(plan.gelu_fusions())  # what the timed model's GELU pairs are built from
        model_ms = eager_ms if eager else graphed_ms
        return {4: {variant: model_ms[variant] for variant in distinct_variants(4, variants)}}

    monkeypatch.setattr(planner, "measure_shapes", fake_measure_shapes)
    monkeypatch.setattr(planner, "time_model_variants", fake_time_model_variants)
    monkeypatch.setattr(planner, "planned_matmul", lambda config: lambda *args: None)  # the plan cache on
    planner.measure(plan, model, max_alg_id=7, tuning_budget_s=60)
    assert measured == [(["ffn", "out"], "fp16"), (["ffn", "out"], "int8"), (["ffn"], INT8_GELU)]
    every_variant = ["dense_masked", "per_layer", "fp16_2of4", "int8_gelu"]
    assert timed_variants == [(False, every_variant), (True, every_variant)]  # in CUDA graphs, then eagerly
    assert plan.layers["ffn"].kernels == {4: Kernel(INT8_GELU, 6)} and plan.layers["out"].kernels == {4: Kernel("int8", 1)}
    assert plan.gelu_fusions() == {"ffn": "out"} and plan.summary()["by_batch"]["bs4"]["layers_int8_gelu"] == 1
    assert plan.eager_variants == {4: "fp16_2of4"} and plan.eager_model_ms[4]["int8_gelu"] == 4.8
    assert plan.layers["ffn"].eager_kernels == {4: Kernel("fp16", 0)} == plan.layers["out"].eager_kernels
    assert plan.summary()["eager_by_batch"]["bs4"]["model_speedup"] == round(5.0 / 4.5, 3)
    # graphed, int8_gelu loses and eagerly it wins: both timings still ran with the pair fusable
    plan.layers["ffn"].kernels = plan.layers["ffn"].eager_kernels = {}
    graphed_ms["int8_gelu"], eager_ms["int8_gelu"] = 4.2, 4.0
    fusions_when_timed.clear()
    planner.measure(plan, model, max_alg_id=7, tuning_budget_s=60)
    assert fusions_when_timed == [{"ffn": "out"}, {"ffn": "out"}]
    assert plan.variants == {4: "per_layer"} and plan.eager_variants == {4: "int8_gelu"}
    assert plan.layers["ffn"].eager_kernels == {4: Kernel(INT8_GELU, 6)} and plan.gelu_fusions() == {"ffn": "out"}
    # with the plan cache off the epilogue is never timed, no pair fuses, and the eager model runs dense
    # (each 2:4 call would plan on the host): not timed
    monkeypatch.setattr(planner, "planned_matmul", lambda config: None)
    measured.clear(), timed_variants.clear()
    plan.layers["ffn"].kernels = plan.layers["ffn"].eager_kernels = {}
    planner.measure(plan, model, max_alg_id=7, tuning_budget_s=60)
    assert [precision for _, precision in measured] == ["fp16", "int8"]
    assert timed_variants == [(False, ["dense_masked", "per_layer", "fp16_2of4"])]
    assert plan.eager_variants == {4: "dense_masked"} and plan.layers["ffn"].eager_kernels == {4: None}
    assert plan.kernel_timing_notes[-1].startswith("eager: dense at every batch size")


def test_timing_the_epilogue_without_the_plan_cache_is_refused_before_touching_a_gpu():
    from engine.tuning import LinearProblem

    with pytest.raises(RuntimeError, match="int8_gelu kernels run through the plan cache, which is off"):
        LinearProblem(3072, 768, 6144, torch.float16, INT8_GELU)
