"""engine/planner.py's decisions, from fake timings: kernel per layer and batch size, whole-model variant, why a layer stays dense."""
from __future__ import annotations

import torch

from engine.kernels import Kernel
from engine.plan import LayerPlan, Plan
from engine.planner import (
    MIN_LAYER_SPEEDUP,
    choose_kernel,
    choose_variant,
    distinct_variants,
    fastest_kernel,
    final_kernels,
    fp16_plan,
    layer_kernels,
    variant_kernels,
    why_dense,
)
from engine.tuning import best_alg


def timing(dense_ms, **sparse_ms):
    return {"dense_ms": dense_ms, "sparse_ms": {int(k[1:]): v for k, v in sparse_ms.items()}, "search": "x",
            "alg_ids_offered": 8}


def fp16(alg_id):
    return Kernel("fp16", alg_id)


def int8(alg_id):
    return Kernel("int8", alg_id)


def test_kernel_choice_by_mode():
    faster = {"fp16": timing(1.0, a0=1.2, a3=0.8, a5=0.9)}
    marginal = {"fp16": timing(1.0, a1=0.995)}  # 1.005x: inside timing noise
    slower = {"fp16": timing(1.0, a0=1.3)}
    assert best_alg(faster["fp16"]) == 3 and best_alg(timing(1.0)) is None
    assert [choose_kernel(faster, mode, MIN_LAYER_SPEEDUP) for mode in ("auto", "all", "none")] == [fp16(3), fp16(3), None]
    assert [choose_kernel(marginal, mode, MIN_LAYER_SPEEDUP) for mode in ("auto", "all", "none")] == [None, fp16(1), None]
    assert [choose_kernel(slower, mode, MIN_LAYER_SPEEDUP) for mode in ("auto", "all", "none")] == [None, fp16(0), None]
    # No config ran (every alg_id failed): dense in every mode.
    assert choose_kernel({"fp16": timing(1.0)}, "all", MIN_LAYER_SPEEDUP) is None


def test_the_fastest_kernel_over_both_precisions_wins():
    mixed = {"fp16": timing(1.0, a2=0.8, a9=0.85), "int8": timing(1.0, a4=0.6, a1=0.7)}
    assert fastest_kernel(mixed) == int8(4) and choose_kernel(mixed, "auto", MIN_LAYER_SPEEDUP) == int8(4)
    fp16_wins = {"fp16": timing(1.0, a2=0.5), "int8": timing(1.0, a4=0.6)}
    assert choose_kernel(fp16_wins, "auto", MIN_LAYER_SPEEDUP) == fp16(2)
    assert fastest_kernel({"fp16": timing(1.0), "int8": timing(1.0)}) is None


def test_variant_choice_keeps_dense_unless_clearly_faster():
    assert choose_variant({"dense_masked": 10.0, "per_layer": 9.0, "fp16_2of4": 9.5}, 1.01) == "per_layer"
    assert choose_variant({"dense_masked": 10.0, "per_layer": 9.95}, 1.01) == "dense_masked"
    assert choose_variant({"dense_masked": 10.0, "fp16_2of4": 12.0}, 1.01) == "dense_masked"


def test_why_dense_names_the_reason():
    two_four = torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(32, 8)  # 32 x 32
    assert why_dense(two_four) is None
    assert "not a multiple of 16" in why_dense(torch.zeros(24, 32))
    dense = torch.ones(32, 32)
    assert why_dense(dense) == "dense: weight is not 2:4 sparse"


FFN, QUERY = "encoder.layer.0.intermediate.dense", "encoder.layer.0.attention.self.query"


def plan_for(mode: str):
    """Two layers' fake timings by batch size and precision: FFN1 (int8 allowed) wins at batch 256
    only, on int8 2:4, and is fastest on fp16 2:4 at batch 4 (slower than dense); attention (fp16 only)
    never wins."""
    timings = {
        FFN: {4: {"fp16": timing(1.0, a0=1.3, a2=1.1), "int8": timing(1.0, a1=1.2)},
              256: {"fp16": timing(10.0, a0=9.8, a5=9.0), "int8": timing(10.0, a4=8.0)}},
        QUERY: {4: {"fp16": timing(0.3, a0=0.5)}, 256: {"fp16": timing(3.0, a1=3.5)}},
    }
    per_layer = layer_kernels(timings, mode)
    model_ms = {4: {"dense_masked": 5.0, "fp16_2of4": 6.0},
                256: {"dense_masked": 100.0, "per_layer": 92.0, "fp16_2of4": 99.0}}
    if mode != "auto":  # all: per-layer kernels are each shape's fastest, at batch 4 the fp16 ones
        model_ms = {4: {"dense_masked": 5.0, "per_layer": 6.0},
                    256: {"dense_masked": 100.0, "per_layer": 97.0, "fp16_2of4": 99.0}}
    return timings, per_layer, model_ms


def test_auto_plan_keeps_2of4_only_where_it_won():
    timings, per_layer, model_ms = plan_for("auto")
    assert per_layer == {FFN: {4: None, 256: int8(4)}, QUERY: {4: None, 256: None}}
    variants = variant_kernels("auto", per_layer, timings, unfused=set())
    kernels, chosen = final_kernels("auto", variants, model_ms)
    assert distinct_variants(256, variants) == ["dense_masked", "per_layer", "fp16_2of4"]  # int8_fused: per_layer's
    assert distinct_variants(4, variants) == ["dense_masked", "fp16_2of4"]  # per_layer: dense_masked, the same kernels
    assert chosen == {4: "dense_masked", 256: "per_layer"}
    assert kernels == per_layer


def test_the_fp16_variant_wins_a_batch_size_where_int8_loses_end_to_end():
    timings, per_layer, model_ms = plan_for("auto")
    model_ms[256]["fp16_2of4"] = 90.0  # int8's quantization passes cost more than they save
    kernels, chosen = final_kernels("auto", variant_kernels("auto", per_layer, timings, set()), model_ms)
    assert chosen == {4: "dense_masked", 256: "fp16_2of4"}
    assert kernels == {FFN: {4: None, 256: fp16(5)}, QUERY: {4: None, 256: fp16(1)}}  # every layer on fp16 2:4


def test_int8_fused_keeps_int8_off_the_layers_whose_quantization_is_a_pass_of_its_own():
    """A layer fed by attention (unfused) that chose int8 takes its fp16 choice in int8_fused, or dense
    where fp16 2:4 did not beat dense; the other layers keep their per-layer kernels."""
    timings, per_layer, model_ms = plan_for("auto")
    out_proj = "encoder.layer.0.attention.output.dense"
    timings[out_proj] = {4: {"fp16": timing(1.0, a6=0.9), "int8": timing(1.0, a7=0.7)},
                         256: {"fp16": timing(4.0, a6=4.1), "int8": timing(4.0, a7=2.0)}}
    per_layer = layer_kernels(timings, "auto")
    variants = variant_kernels("auto", per_layer, timings, unfused={out_proj})
    assert variants["per_layer"][out_proj] == {4: int8(7), 256: int8(7)}
    assert variants["int8_fused"][out_proj] == {4: fp16(6), 256: None}  # at 256 fp16 2:4 is slower than dense
    assert variants["int8_fused"][FFN] == per_layer[FFN]
    assert distinct_variants(256, variants) == ["dense_masked", "per_layer", "fp16_2of4", "int8_fused"]
    model_ms[256]["int8_fused"] = 91.0
    kernels, chosen = final_kernels("auto", variants, model_ms)
    assert chosen[256] == "int8_fused" and kernels[out_proj][256] is None and kernels[FFN][256] == int8(4)


def test_all_plan_takes_every_fastest_config():
    timings, per_layer, model_ms = plan_for("all")
    variants = variant_kernels("all", per_layer, timings, set())
    assert distinct_variants(4, variants) == ["dense_masked", "per_layer"]  # fp16_2of4: the same kernels
    kernels, variants = final_kernels("all", variants, model_ms)
    assert kernels == {FFN: {4: fp16(2), 256: int8(4)}, QUERY: {4: fp16(0), 256: fp16(1)}}
    assert variants == {4: "per_layer", 256: "per_layer"}  # all keeps 2:4 even where it is slower


def test_measure_fills_the_plan_from_timings_by_precision_and_batch_size(monkeypatch):
    """measure's wiring on a CPU: kernel timings (one call per precision) and whole-model timings faked."""
    from engine import planner
    from engine.plan import LayerPlan, Plan

    model = torch.nn.ModuleDict({"ffn": torch.nn.Linear(768, 3072), "query": torch.nn.Linear(768, 768),
                                 "pooler": torch.nn.Linear(768, 768)})
    timings, _, model_ms = plan_for("auto")
    measured = []

    def fake_measure_shapes(layers, batch_sizes, seq_length, dtype, max_alg_id, precision, budget_s, config):
        measured.append((sorted(layers), batch_sizes, seq_length, dtype, precision, budget_s))
        layer_of = {"3072x768": FFN, "768x768": QUERY}
        shapes = {f"{linear.out_features}x{linear.in_features}" for linear in layers.values()}
        return ({shape: {batch: by_precision[precision] for batch, by_precision in timings[layer_of[shape]].items()}
                 for shape in shapes}, [f"{precision} note"])

    monkeypatch.setattr(planner, "measure_shapes", fake_measure_shapes)
    monkeypatch.setattr(planner, "time_model_variants", lambda model, plan, variants, planned: model_ms)
    plan = Plan(mode="auto", precision="int8", backend="cusparselt", reason="r", dtype="float16", compiled=True,
                batch_sizes=[4, 256], seq_length=384, layers={
                    "ffn": LayerPlan((3072, 768), "int8", input_scale=0.1, smoothing=torch.ones(768)),
                    "query": LayerPlan((768, 768)),
                    "pooler": LayerPlan((768, 768), reason="dense: weight is not 2:4 sparse")})
    planner.measure(plan, model, max_alg_id=7, tuning_budget_s=60)
    assert measured == [(["ffn", "query"], [4, 256], 384, torch.float16, "fp16", 60),
                        (["ffn"], [4, 256], 384, torch.float16, "int8", 60)]  # int8 only where it passed
    # no plan cache here: the eager model is dense, untimed (each 2:4 call would plan on the host)
    assert plan.kernel_timing_notes[:2] == ["fp16 note", "int8 note"] and len(plan.kernel_timing_notes) == 3
    assert plan.eager_variants == {4: "dense_masked", 256: "dense_masked"} and plan.eager_model_ms == {}
    assert plan.layers["ffn"].eager_kernels == {4: None, 256: None} and plan.sparse_layers(eager=True) == []
    assert plan.tuning == {"max_alg_id": 7, "budget_s_per_precision": 60, "alg_ids_offered": {"fp16": 8, "int8": 8}}
    assert plan.variants == {4: "dense_masked", 256: "per_layer"} and plan.model_ms == model_ms
    assert plan.layers["ffn"].kernels == {4: None, 256: int8(4)}
    assert plan.layers["query"].kernels == {4: None, 256: None}
    assert plan.layers["pooler"].kernels == {} and plan.sparse_layers() == ["ffn"]


def test_an_int8_plans_fp16_counterpart_takes_each_layers_fp16_choice():
    """The benchmark's fp16 2:4 model beside an int8 plan: FFN's int8 kernel at batch 256 gives way to
    its fastest fp16 config (it beat dense), at batch 4 fp16 lost to dense; a blocked layer stays dense."""
    timings, per_layer, _ = plan_for("auto")
    def shape(name, precision):
        return {batch: by_precision[precision] for batch, by_precision in timings[name].items()}

    shape_timings = {"fp16": {"3072x768": shape(FFN, "fp16"), "768x768": shape(QUERY, "fp16")},
                     "int8": {"3072x768": shape(FFN, "int8")}}
    blocked = "encoder.layer.0.attention.output.dense"
    layers = {FFN: LayerPlan((3072, 768), "int8", per_layer[FFN], dict(per_layer[FFN]), input_scale=0.05,
                             smoothing=torch.ones(768)),
              QUERY: LayerPlan((768, 768), "fp16", per_layer[QUERY]),
              blocked: LayerPlan((768, 768), kernels={4: None, 256: None}, reason="dense: weight is not 2:4 sparse")}
    plan = Plan(mode="auto", precision="int8", backend="cusparselt", reason="r", dtype="float16", compiled=True,
                batch_sizes=[4, 256], seq_length=128, shape_timings=shape_timings, layers=layers)
    counterpart = fp16_plan(plan)
    assert counterpart.precision == "fp16" and plan.precision == "int8"  # the plan itself untouched
    assert {name: layer.kernels for name, layer in counterpart.layers.items()} == {
        FFN: {4: None, 256: fp16(5)}, QUERY: {4: None, 256: None}, blocked: {4: None, 256: None}}
    assert all(layer.precision == "fp16" and layer.smoothing is None and layer.input_scale is None
               and layer.eager_kernels == {} for layer in counterpart.layers.values())
    assert counterpart.layers[blocked].reason == "dense: weight is not 2:4 sparse"
    assert counterpart.gelu_fusions() == {} and counterpart.sparse_layers() == [FFN]
