"""engine/planner.py's decisions, from fake timings: kernel per layer and batch size, whole-model variant, why a layer stays dense."""
from __future__ import annotations

import torch

from engine.planner import (
    MIN_LAYER_SPEEDUP,
    choose_alg,
    choose_variant,
    distinct_variants,
    final_kernels,
    layer_kernels,
    why_dense,
)
from engine.tuning import best_alg


def timing(dense_ms, **sparse_ms):
    return {"dense_ms": dense_ms, "sparse_ms": {int(k[1:]): v for k, v in sparse_ms.items()}, "search": "x"}


def test_kernel_choice_by_mode():
    faster = timing(1.0, a0=1.2, a3=0.8, a5=0.9)
    marginal = timing(1.0, a1=0.995)  # 1.005x: inside timing noise
    slower = timing(1.0, a0=1.3)
    assert best_alg(faster) == 3 and best_alg(timing(1.0)) is None
    assert [choose_alg(faster, mode, MIN_LAYER_SPEEDUP) for mode in ("auto", "all", "none")] == [3, 3, None]
    assert [choose_alg(marginal, mode, MIN_LAYER_SPEEDUP) for mode in ("auto", "all", "none")] == [None, 1, None]
    assert [choose_alg(slower, mode, MIN_LAYER_SPEEDUP) for mode in ("auto", "all", "none")] == [None, 0, None]
    # No config ran (every alg_id failed): dense in every mode.
    assert choose_alg(timing(1.0), "all", MIN_LAYER_SPEEDUP) is None


def test_variant_choice_keeps_dense_unless_clearly_faster():
    assert choose_variant({"dense": 10.0, "per_layer": 9.0, "all_2of4": 9.5}, 1.01) == "per_layer"
    assert choose_variant({"dense": 10.0, "per_layer": 9.95}, 1.01) == "dense"
    assert choose_variant({"dense": 10.0, "all_2of4": 12.0}, 1.01) == "dense"


def test_why_dense_names_the_reason():
    two_four = torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(32, 8)  # 32 x 32
    assert why_dense(two_four) is None
    assert "not a multiple of 16" in why_dense(torch.zeros(24, 32))
    dense = torch.ones(32, 32)
    assert why_dense(dense) == "dense: weight is not 2:4 sparse"


FFN, QUERY = "encoder.layer.0.intermediate.dense", "encoder.layer.0.attention.self.query"


def plan_for(mode: str):
    """Two layers' fake timings by batch size: FFN1 wins at batch 256 only, attention never."""
    timings = {
        FFN: {4: timing(1.0, a0=1.3, a2=1.1), 256: timing(10.0, a0=9.8, a4=8.0)},
        QUERY: {4: timing(0.3, a0=0.5), 256: timing(3.0, a1=3.5)},
    }
    per_layer = layer_kernels(timings, mode)
    model_ms = {4: {"dense": 5.0, "all_2of4": 6.0}, 256: {"dense": 100.0, "per_layer": 92.0, "all_2of4": 97.0}}
    if mode != "auto":  # all: per-layer kernels are each shape's fastest, the same as all_2of4
        model_ms = {4: {"dense": 5.0, "per_layer": 6.0}, 256: {"dense": 100.0, "per_layer": 97.0}}
    return timings, per_layer, model_ms


def test_auto_plan_keeps_2of4_only_where_it_won():
    timings, per_layer, model_ms = plan_for("auto")
    assert per_layer == {FFN: {4: None, 256: 4}, QUERY: {4: None, 256: None}}
    kernels, variants = final_kernels("auto", per_layer, timings, model_ms)
    assert distinct_variants(256, per_layer, timings) == ["dense", "per_layer", "all_2of4"]
    assert distinct_variants(4, per_layer, timings) == ["dense", "all_2of4"]
    assert variants == {4: "dense", 256: "per_layer"}
    assert kernels == per_layer


def test_all_plan_takes_every_fastest_config():
    timings, per_layer, model_ms = plan_for("all")
    assert distinct_variants(4, per_layer, timings) == ["dense", "per_layer"]
    kernels, variants = final_kernels("all", per_layer, timings, model_ms)
    assert kernels == {FFN: {4: 2, 256: 4}, QUERY: {4: 0, 256: 1}}
    assert variants == {4: "per_layer", 256: "per_layer"}  # all keeps 2:4 even where it is slower


def test_measure_fills_the_plan_from_timings_by_precision_and_batch_size(monkeypatch):
    """measure's wiring on a CPU: kernel timings (one call per precision) and whole-model timings faked."""
    from engine import planner
    from engine.plan import LayerPlan, Plan

    model = torch.nn.ModuleDict({"ffn": torch.nn.Linear(768, 3072), "query": torch.nn.Linear(768, 768),
                                 "pooler": torch.nn.Linear(768, 768)})
    timings, _, model_ms = plan_for("auto")
    measured = []

    def fake_measure_shapes(layers, batch_sizes, seq_length, dtype, max_alg_id, precision):
        measured.append((sorted(layers), batch_sizes, seq_length, dtype, precision))
        by_shape = {"int8": {"3072x768": timings[FFN]}, "fp16": {"768x768": timings[QUERY]}}[precision]
        return by_shape, [f"{precision} note"]

    monkeypatch.setattr(planner, "measure_shapes", fake_measure_shapes)
    monkeypatch.setattr(planner, "time_model_variants", lambda model, plan, per_layer, timings: model_ms)
    plan = Plan(mode="auto", precision="int8", backend="cusparselt", reason="r", dtype="float16", compiled=True,
                batch_sizes=[4, 256], seq_length=384, layers={
                    "ffn": LayerPlan((3072, 768), "int8", input_scale=0.1, smoothing=torch.ones(768)),
                    "query": LayerPlan((768, 768)),
                    "pooler": LayerPlan((768, 768), reason="dense: weight is not 2:4 sparse")})
    planner.measure(plan, model, max_alg_id=7)
    assert measured == [(["query"], [4, 256], 384, torch.float16, "fp16"), (["ffn"], [4, 256], 384, torch.float16, "int8")]
    assert plan.kernel_timing_notes == ["fp16 note", "int8 note"]
    assert plan.variants == {4: "dense", 256: "per_layer"} and plan.model_ms == model_ms
    assert plan.layers["ffn"].kernels == {4: None, 256: 4} and plan.layers["query"].kernels == {4: None, 256: None}
    assert plan.layers["pooler"].kernels == {} and plan.sparse_layers() == ["ffn"]
