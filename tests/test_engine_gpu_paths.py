"""The GPU-only paths of making and applying a plan, run on a CPU with cuSPARSELt's two calls replaced by
their definition (the arithmetic, no kernel): whole-model variants timed on one model whose kernels are
switched between them, and a plan mixing dense, fp16 2:4 and int8 2:4 applied and served bucketed."""
from __future__ import annotations

import copy

import pytest
import torch

from engine import planner
from engine.adapters import fuse_qkv, unfused_inputs
from engine.kernels import TOKEN_ALIGNMENT, Kernel, SparseLinear
from engine.adapters import encoder_linears
from engine.plan import LayerPlan, Plan
from test_engine_attention import small_bert
from test_engine_kernels import fake_cslt_sparse_mm
from test_engine_planner import timing

SEQ = 16


@pytest.fixture
def cpu_cusparselt(monkeypatch) -> list:
    """torch's cuSPARSELt calls on a CPU, exact; the list of sparse calls made."""
    calls = []
    monkeypatch.setattr(torch, "_cslt_compress", lambda weight: weight.clone())
    monkeypatch.setattr(torch, "_cslt_sparse_mm", fake_cslt_sparse_mm(calls))
    monkeypatch.setitem(TOKEN_ALIGNMENT, torch.float32, 4)  # float32 stands in for fp16 on a CPU
    return calls


def mixed_plan(model: torch.nn.Module, kernels: dict[str, dict] | None = None) -> Plan:
    """A plan for the model's encoder Linears: the attention ones may run int8 (calibrated), the rest fp16."""
    layers = {}
    for name, linear in encoder_linears(model).items():
        int8 = "attention" in name
        layers[name] = LayerPlan(tuple(linear.weight.shape), "int8" if int8 else "fp16", (kernels or {}).get(name, {}),
                                 input_scale=0.05 if int8 else None,
                                 smoothing=torch.ones(linear.in_features) if int8 else None)
    return Plan(mode="auto", precision="int8", backend="cusparselt", reason="r", dtype="float32", compiled=False,
                batch_sizes=[1, 2], seq_length=SEQ, layers=layers)


def test_whole_model_variants_switch_kernels_on_one_model(cpu_cusparselt):
    model = fuse_qkv(small_bert())
    plan = mixed_plan(model)
    # int8 fastest per layer at batch 2 on the attention layers, fp16 elsewhere; nothing wins at batch 1
    timings = {name: {1: {p: timing(1.0, a0=1.5) for p in planner.precisions(layer)},
                      2: {"fp16": timing(1.0, a3=0.8), **({"int8": timing(1.0, a1=0.5)} if layer.smoothing is not None
                                                            else {})}}
               for name, layer in plan.layers.items()}
    per_layer = planner.layer_kernels(timings, "auto")
    variants = planner.variant_kernels("auto", per_layer, timings, unfused_inputs(model, per_layer))
    model_ms = planner.time_model_variants(model, plan, variants, planned=None)
    assert {batch: sorted(ms) for batch, ms in model_ms.items()} == {
        1: ["dense_masked", "fp16_2of4"], 2: ["dense_masked", "fp16_2of4", "int8_fused", "per_layer"]}
    assert all(ms > 0 for by_variant in model_ms.values() for ms in by_variant.values())
    kinds = {(call["input_dtype"], call["alg_id"]) for call in cpu_cusparselt}
    assert kinds == {(torch.float32, 0), (torch.float32, 3), (torch.int8, 1)}  # each variant's kernels ran
    assert not any(isinstance(module, SparseLinear) for module in model.modules())  # timed on a copy


def test_a_mixed_plan_applied_serves_any_shape_with_each_batch_sizes_kernels(cpu_cusparselt, monkeypatch):
    monkeypatch.setattr("engine.plan.device_backend", lambda device: ("cusparselt", "a CPU standing in"))
    model = fuse_qkv(small_bert())
    dense = copy.deepcopy(model)
    names = list(encoder_linears(model))
    qkv, ffn = names[0], next(name for name in names if "intermediate" in name)
    plan = mixed_plan(model, {qkv: {1: Kernel("int8", 0), 2: Kernel("fp16", 3)}, ffn: {1: Kernel("fp16", 1), 2: None}})
    served = plan.apply(model)
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for batch, seq in ((1, 10), (2, 16), (2, 5)):
            cpu_cusparselt.clear()
            input_ids = torch.randint(0, 100, (batch, seq), generator=generator)
            got, expected = served(input_ids=input_ids), dense(input_ids=input_ids)
            assert got.start_logits.shape == (batch, seq)
            error = (got.start_logits - expected.start_logits).norm() / expected.start_logits.norm()
            ran = [(call["input_dtype"], call["alg_id"]) for call in cpu_cusparselt]
            if batch == 1:  # padded to 1 x 16 tokens: layer 0 runs int8 query/key/value, fp16 FFN-in
                assert ran == [(torch.int8, 0), (torch.float32, 1)] and error < 2e-2
            else:  # 2 x 16: fp16 query/key/value, dense FFN-in; the stand-in is exact
                assert ran == [(torch.float32, 3)] and error < 1e-5
