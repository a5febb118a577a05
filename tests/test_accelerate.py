"""The GPU engine's decisions, tested on a CPU: backend by device, buckets, kernel and variant choice,
the plan's round trip, the stage's dense plan without a GPU, and benchmark's out-of-memory record."""
from __future__ import annotations

import json

import pytest
import torch

from stages import accelerate, benchmark
from stages.accelerate import (
    MIN_LAYER_SPEEDUP,
    distinct_variants,
    final_kernels,
    layer_kernels,
    plan_kernels,
    summarize,
    why_dense,
)
from stages.sparse_engine import (
    best_alg,
    bucket_for,
    choose_alg,
    choose_variant,
    rotation_count,
    sparse_backend,
    token_buckets,
)


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


def test_token_buckets_and_bucket_selection():
    buckets = token_buckets([64, 4, 16, 4], 384)
    assert buckets == [1536, 6144, 24576]
    assert bucket_for(1, buckets) == 1536
    assert bucket_for(1536, buckets) == 1536
    assert bucket_for(1537, buckets) == 6144
    assert bucket_for(24576, buckets) == 24576
    assert bucket_for(10**6, buckets) == 24576  # past the largest: the largest


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


def test_rotation_count_spills_l2():
    assert rotation_count(bytes_per_call=100 * 2**20, l2_bytes=50 * 2**20) == 1
    assert rotation_count(bytes_per_call=10 * 2**20, l2_bytes=50 * 2**20) == 8  # capped
    assert rotation_count(bytes_per_call=30 * 2**20, l2_bytes=50 * 2**20) == 4


def test_why_dense_names_the_reason():
    two_four = torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(32, 8)  # 32 x 32
    assert why_dense(two_four) is None
    assert "not a multiple of 16" in why_dense(torch.zeros(24, 32))
    dense = torch.ones(32, 32)
    assert why_dense(dense) == "dense: weight is not 2:4 sparse"


def plan_for(mode: str):
    """A two-layer plan built from fake timings: FFN1 wins at the big bucket only, attention never."""
    shapes = {"encoder.layer.0.intermediate.dense": "3072x768", "encoder.layer.0.attention.self.query": "768x768"}
    timings = {
        "3072x768": {1536: timing(1.0, a0=1.3, a2=1.1), 98304: timing(10.0, a0=9.8, a4=8.0)},
        "768x768": {1536: timing(0.3, a0=0.5), 98304: timing(3.0, a1=3.5)},
    }
    per_layer = layer_kernels(shapes, timings, mode)
    model_ms = {1536: {"dense": 5.0, "all_2of4": 6.0}, 98304: {"dense": 100.0, "per_layer": 92.0, "all_2of4": 97.0}}
    if mode != "auto":  # all: per-layer kernels are each shape's fastest, the same as all_2of4
        model_ms = {1536: {"dense": 5.0, "per_layer": 6.0}, 98304: {"dense": 100.0, "per_layer": 97.0}}
    return shapes, timings, per_layer, model_ms


def test_auto_plan_keeps_2of4_only_where_it_won():
    shapes, timings, per_layer, model_ms = plan_for("auto")
    assert per_layer == {"encoder.layer.0.intermediate.dense": {1536: None, 98304: 4},
                         "encoder.layer.0.attention.self.query": {1536: None, 98304: None}}
    kernels, variants = final_kernels("auto", per_layer, shapes, timings, model_ms)
    assert distinct_variants(98304, per_layer, shapes, timings) == ["dense", "per_layer", "all_2of4"]
    assert distinct_variants(1536, per_layer, shapes, timings) == ["dense", "all_2of4"]
    assert variants == {1536: "dense", 98304: "per_layer"}
    assert kernels == per_layer


def test_all_plan_takes_every_fastest_config():
    shapes, timings, per_layer, model_ms = plan_for("all")
    assert distinct_variants(1536, per_layer, shapes, timings) == ["dense", "per_layer"]
    kernels, variants = final_kernels("all", per_layer, shapes, timings, model_ms)
    assert kernels == {"encoder.layer.0.intermediate.dense": {1536: 2, 98304: 4},
                       "encoder.layer.0.attention.self.query": {1536: 0, 98304: 1}}
    assert variants == {1536: "per_layer", 98304: "per_layer"}  # all keeps 2:4 even where it is slower


def test_plan_round_trips_through_json_and_summary():
    shapes, timings, per_layer, model_ms = plan_for("auto")
    kernels, variants = final_kernels("auto", per_layer, shapes, timings, model_ms)
    plan = {
        "mode": "auto", "precision": "fp16", "backend": "cusparselt", "reason": "r", "dtype": "float16",
        "seq_length": 384,
        "variants": {str(b): v for b, v in variants.items()},
        "model_ms": {str(b): ms for b, ms in model_ms.items()},
        "shape_timings": {s: {str(b): {**t, "sparse_ms": {str(a): v for a, v in t["sparse_ms"].items()}}
                              for b, t in per.items()} for s, per in timings.items()},
        "layers": {name: {"shape": shapes[name], "precision": "fp16", "kernels": {str(b): a for b, a in kernels[name].items()}}
                   for name in shapes},
    }
    # A layer left dense by prune.exclude: no kernels at all, a reason instead.
    blocked = "encoder.layer.0.attention.output.dense"
    plan["layers"][blocked] = {"shape": "768x768", "precision": "fp16", "kernels": {},
                               "reason": "dense: weight is not 2:4 sparse"}
    plan = json.loads(json.dumps(plan))
    assert plan_kernels(plan) == {"encoder.layer.0.intermediate.dense": {1536: None, 98304: 4}}
    metrics = summarize(plan)
    assert (metrics["layers_2of4"], metrics["layers_dense"]) == (1, 2)
    assert metrics["layers"][blocked] == {"kernel": "dense", "reason": "dense: weight is not 2:4 sparse"}
    assert metrics["by_batch"]["bs4"] == {"variant": "dense", "layers_2of4": 0, "model_dense_ms": 5.0,
                                          "model_accelerated_ms": 5.0, "model_speedup": 1.0}
    assert metrics["by_batch"]["bs256"]["layers_2of4"] == 1
    assert metrics["by_batch"]["bs256"]["model_speedup"] == round(100 / 92, 3)
    ffn = metrics["layers"]["encoder.layer.0.intermediate.dense"]["bs256"]
    assert ffn == {"kernel": "cusparselt fp16 alg_id 4", "dense_ms": 10.0, "sparse_ms": 8.0, "speedup": 1.25}


def test_stage_without_gpu_writes_a_dense_plan_with_its_reason(params, tiny_model, tmp_path):
    from stages.attention import fuse_qkv
    from stages.modeling import load_qa_model

    out = tmp_path / "accelerated"
    out.mkdir()
    metrics = accelerate.run(params, tiny_model, out)
    assert (metrics["backend"], metrics["reason"]) == ("dense", "dense: no CUDA device")
    assert metrics["layers_2of4"] == 0 and metrics["output_relative_error"] is None
    plan = json.loads((out / accelerate.PLAN_FILE).read_text())
    assert plan["layers"] and all(entry["reason"] == "dense: no CUDA device" for entry in plan["layers"].values())
    assert any(name.endswith("attention.self.qkv") for name in plan["layers"])  # planned on the fused model
    loaded = accelerate.load_accelerated(out, torch.device("cpu"), torch.float32)
    reference = fuse_qkv(load_qa_model(str(tiny_model)))
    assert loaded.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), reference.state_dict().values()))


def test_benchmark_records_out_of_memory_and_runs_the_other_sizes(params, tiny_model, tmp_path, monkeypatch):
    (tmp_path / "accelerated").mkdir()
    accelerate.run(params, tiny_model, tmp_path / "accelerated")
    real_measure = benchmark.measure_batch

    def out_of_memory_at_batch_1(models, batch, *args):
        if batch == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_measure(models, batch, *args)

    monkeypatch.setattr(benchmark, "measure_batch", out_of_memory_at_batch_1)
    metrics, rows = benchmark.run(params, tiny_model, tmp_path / "accelerated")
    assert metrics["latency_ms"]["bs1"] == {"error": "out of memory"}
    assert metrics["latency_ms"]["bs2"]["dense_eager"] > 0
    assert metrics["speedup"]["bs1"] == {} and metrics["speedup"]["bs2"]["eager"] > 0
    assert {row["batch_size"] for row in rows} == {2}


def test_benchmark_reraises_errors_that_are_not_out_of_memory(params, tiny_model, tmp_path, monkeypatch):
    (tmp_path / "accelerated").mkdir()
    accelerate.run(params, tiny_model, tmp_path / "accelerated")
    monkeypatch.setattr(benchmark, "measure_batch", lambda *args: (_ for _ in ()).throw(RuntimeError("bad shape")))
    with pytest.raises(RuntimeError, match="bad shape"):
        benchmark.run(params, tiny_model, tmp_path / "accelerated")


def test_kernel_timing_child_that_stalls_is_killed():
    import subprocess
    import sys

    from stages.sparse_engine import EVENT, _events

    script = f"import time; print({EVENT!r} + '{{\"kind\": \"try\"}}', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    events = _events(child, stall_timeout_s=2.0)
    assert next(events) == {"kind": "try"}
    with pytest.raises(TimeoutError, match="no progress for 2 s"):
        next(events)
    assert child.wait(timeout=10) != 0  # killed, not left running


def test_kernel_timing_without_gpu_fails_with_the_childs_error():
    from stages.sparse_engine import tune_linears

    if torch.cuda.is_available():
        pytest.skip("this checks the message on a machine without CUDA")
    with pytest.raises(RuntimeError, match="kernel timing process failed outside a kernel config: .*Error"):
        tune_linears([(32, 32, 64)], torch.float16)


def test_measure_shapes_times_every_config_at_the_largest_bucket_and_the_best_few_elsewhere(monkeypatch):
    calls = []

    def fake_tune(problems, dtype, try_search=True, max_alg_id=15, int8=False, alg_ids=None, **_):
        calls.append({"problems": problems, "try_search": try_search, "int8": int8, "alg_ids": alg_ids})
        results = {}
        for p in problems:
            ids = range(max_alg_id + 1) if alg_ids is None else alg_ids[p]
            # alg_id 4 fastest, then 2, then 7; the rest slower
            order = {4: 0.5, 2: 0.6, 7: 0.7}
            results[p] = {"dense_ms": 1.0, "sparse_ms": {a: order.get(a, 0.9 + a / 100) for a in ids},
                          "search": "failed; alg_ids timed by hand"}
        return results, []

    monkeypatch.setattr(accelerate, "tune_linears", fake_tune)
    layers = {"a": torch.nn.Linear(8, 16), "b": torch.nn.Linear(16, 8), "c": torch.nn.Linear(8, 16)}
    timings, _ = accelerate.measure_shapes(layers, [64, 256, 1024], torch.float16, max_alg_id=9, precision="int8")
    assert calls[0]["problems"] == [(8, 16, 1024), (16, 8, 1024)] and calls[0]["alg_ids"] is None
    assert calls[1]["problems"] == [(8, 16, 64), (8, 16, 256), (16, 8, 64), (16, 8, 256)]
    assert calls[1]["alg_ids"] == {p: [4, 2, 7] for p in calls[1]["problems"]}
    assert not calls[1]["try_search"] and calls[1]["int8"]  # the search failed once: not tried again
    assert set(timings) == {"int8:16x8", "int8:8x16"}
    assert set(timings["int8:16x8"][64]["sparse_ms"]) == {4, 2, 7}
    assert len(timings["int8:16x8"][1024]["sparse_ms"]) == 10


def small_bert():
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    return BertForQuestionAnswering(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=64, vocab_size=100)).eval()


def test_fused_attention_drops_a_broadcast_mask_and_keeps_results():
    from stages.attention import FUSED_SDPA, _sdpa_fused_mask, use_fused_attention

    model = small_bert()
    input_ids = torch.randint(0, 100, (2, 12))
    attention_mask = torch.ones(2, 12, dtype=torch.long)
    attention_mask[1, 8:] = 0
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=attention_mask).start_logits
        use_fused_attention(model)
        after = model(input_ids=input_ids, attention_mask=attention_mask).start_logits
    assert model.config._attn_implementation == FUSED_SDPA
    assert torch.allclose(before, after, atol=1e-6)

    seen = []
    monkey_forward = lambda module, q, k, v, mask, **kw: seen.append(mask)  # noqa: E731
    import transformers.integrations.sdpa_attention as sdpa
    original, sdpa.sdpa_attention_forward = sdpa.sdpa_attention_forward, monkey_forward
    try:
        q = torch.randn(2, 2, 12, 16)
        _sdpa_fused_mask(None, q, q, q, torch.tensor(True).expand(2, 1, 12, 12))
        _sdpa_fused_mask(None, q, q, q, torch.ones(2, 1, 12, 1, dtype=torch.bool).expand(2, 1, 12, 12))
    finally:
        sdpa.sdpa_attention_forward = original
    assert seen[0] is None  # one value broadcast everywhere: nothing masked
    assert seen[1].stride(-1) == 1 and seen[1].shape == (2, 1, 12, 12)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_fuse_qkv_stacks_query_key_value_and_keeps_the_outputs(attention):
    from stages.attention import FusedQKVSelfAttention, fuse_qkv

    model = small_bert()
    model.config._attn_implementation = attention
    input_ids = torch.randint(0, 100, (2, 12))
    attention_mask = torch.ones(2, 12, dtype=torch.long)
    attention_mask[1, 7:] = 0
    first = model.bert.encoder.layer[0].attention.self
    stacked_weight = torch.cat([first.query.weight, first.key.weight, first.value.weight]).detach().clone()
    stacked_bias = torch.cat([first.query.bias, first.key.bias, first.value.bias]).detach().clone()
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=attention_mask)
        fuse_qkv(model)
        after = model(input_ids=input_ids, attention_mask=attention_mask)
    linears = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    assert not any(name.endswith(("query", "key", "value")) for name in linears)
    assert sum(name.endswith("attention.self.qkv") for name in linears) == 2
    assert isinstance(first, FusedQKVSelfAttention) and first.qkv.weight.shape == (96, 32)
    assert torch.equal(first.qkv.weight, stacked_weight) and torch.equal(first.qkv.bias, stacked_bias)
    torch.testing.assert_close(after.start_logits, before.start_logits)
    torch.testing.assert_close(after.end_logits, before.end_logits)
    with pytest.raises(ValueError, match="no key/value cache"):
        first(torch.randn(1, 3, 32), past_key_values=object())


def test_fused_attention_compiles_as_one_graph_inside_capture_context():
    """The masks are dropped while capturing without a graph break (a ContextVar read broke one per
    layer, which cost int8 its fusions on an H100)."""
    from stages.attention import capture_context, use_fused_attention

    model = use_fused_attention(small_bert())
    import transformers.integrations.sdpa_attention as sdpa

    input_ids = torch.randint(0, 100, (2, 12))
    unpadded = torch.ones_like(input_ids)  # a mask tensor reaches the attention, as under capture
    seen, original = [], sdpa.sdpa_attention_forward
    with torch.no_grad(), capture_context({"input_ids": input_ids}):
        explained = torch._dynamo.explain(model)(input_ids=input_ids, attention_mask=unpadded)
        sdpa.sdpa_attention_forward = lambda module, q, k, v, mask, **kw: (seen.append(mask), original(
            module, q, k, v, mask, **kw))[1]
        try:
            model(input_ids=input_ids, attention_mask=unpadded)
        finally:
            sdpa.sdpa_attention_forward = original
    torch.compiler.reset()
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    assert seen == [None, None]  # one per layer: every mask dropped while capturing


def test_timing_budget_stops_slow_calls_after_one_timed_call():
    import time

    from stages.sparse_engine import median_ms

    calls = []
    slow = lambda: (calls.append(1), time.sleep(0.2))  # noqa: E731
    assert median_ms(slow, warmup=5, repeats=20, device=torch.device("cpu"), budget_s=0.3) >= 200
    assert len(calls) == 3  # 2 warm-ups spend the budget, then the one timed call
    calls.clear()
    median_ms(lambda: calls.append(1), warmup=2, repeats=20, device=torch.device("cpu"), budget_s=5)
    assert len(calls) == 22  # fast calls: the whole count


def test_driver_version_read_from_the_kernel_module(monkeypatch):
    from pathlib import Path

    text = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (dvs-builder@U22)\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: text)
    assert benchmark.gpu_driver_version() == "580.159.04"


def test_swap_linears_puts_each_kind_in_place_and_dense_buckets_match_the_linear(monkeypatch):
    from stages.sparse_engine import Int8SparseLinear, SparseLinear, swap_linears

    monkeypatch.setattr(torch, "_cslt_compress", lambda weight: weight.clone())  # packing is CUDA-only
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU()), torch.nn.Linear(16, 4))
    x = torch.randn(3, 5, 8)
    expected = model(x)
    swap_linears(model, {"0.0": {64: None}, "1": {64: None}}, int8_calibration={"1": (torch.ones(16), 0.05)})
    assert type(model[0][0]) is SparseLinear and type(model[1]) is Int8SparseLinear
    assert model[1].packed.dtype == torch.int8 and model[1].alpha.shape == (4,)
    assert torch.allclose(model[1].multipliers, torch.full((16,), 20.0))
    assert torch.allclose(model(x), expected)  # every bucket dense: the plain Linear's result


def test_swap_linears_gives_layers_calibrated_together_one_multipliers_tensor(monkeypatch):
    from stages.sparse_engine import swap_linears

    monkeypatch.setattr(torch, "_cslt_compress", lambda weight: weight.clone())  # packing is CUDA-only
    model = torch.nn.ModuleDict({n: torch.nn.Linear(8, 8) for n in ("query", "key", "value", "out")})
    together, alone = (torch.linspace(1, 2, 8), 0.1), (torch.linspace(1, 3, 8), 0.1)
    calibration = {"query": together, "key": (together[0].clone(), 0.1), "value": together, "out": alone}
    swap_linears(model, {n: {64: 0} for n in model}, int8_calibration=calibration)
    assert model["query"].multipliers is model["key"].multipliers is model["value"].multipliers
    assert model["out"].multipliers is not model["query"].multipliers
    assert "multipliers" in dict(model["key"].named_buffers())  # still a buffer: moves with .to(device)
