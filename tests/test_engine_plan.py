"""engine/plan.py: the plan's file round trip, its summary, files of an older format, and applying
it to a model on a CPU."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from engine.errors import InputError
from engine.kernels import Int8ReferenceLinear, Int8Weights, Kernel, SparseConfig, reference_linear
from engine.plan import PLAN_FILE, PLAN_VERSION, SMOOTHING_FILE, LayerPlan, Plan
from engine.planner import final_kernels, variant_kernels
from test_engine_planner import FFN, QUERY, fp16, int8, plan_for

# plan.json as accelerate wrote it before plans had a type (int8, one BERT layer, on a CPU).
PLAN_BEFORE_VERSIONS = Path(__file__).parent / "fixtures" / "plan-v0.json"
BLOCKED = "encoder.layer.0.attention.output.dense"


def measured_plan() -> Plan:
    """A GPU-made plan from plan_for's timings: FFN1 on int8 2:4 at batch 256, the query dense, one
    layer left dense by prune.exclude."""
    timings, per_layer, model_ms = plan_for("auto")
    all_variants = variant_kernels("auto", per_layer, timings, set())
    kernels, variants = final_kernels("auto", all_variants, model_ms)
    # eagerly, int8's extra quantization call costs more host time than its kernel saves at batch 256
    eager_model_ms = {4: {"dense_masked": 9.0, "fp16_2of4": 9.5},
                      256: {"dense_masked": 120.0, "per_layer": 125.0, "fp16_2of4": 110.0}}
    eager_kernels, eager_variants = final_kernels("auto", all_variants, eager_model_ms)
    layers = {
        FFN: LayerPlan((3072, 768), "int8", kernels[FFN], eager_kernels[FFN], input_scale=0.05,
                       smoothing=torch.linspace(1, 2, 768)),
        QUERY: LayerPlan((768, 768), "fp16", kernels[QUERY], eager_kernels[QUERY]),
        BLOCKED: LayerPlan((768, 768), reason="dense: weight is not 2:4 sparse"),
    }
    return Plan(mode="auto", precision="int8", backend="cusparselt", reason="r", dtype="float16", compiled=True,
                batch_sizes=[4, 256], seq_length=384, layers=layers, variants=variants, model_ms=model_ms,
                eager_variants=eager_variants, eager_model_ms=eager_model_ms,
                shape_timings={precision: {shape: {batch: by_precision[precision]
                                                   for batch, by_precision in timings[layer].items()}
                                           for shape, layer in (("3072x768", FFN), ("768x768", QUERY))
                                           if precision in timings[layer][4]}
                               for precision in ("fp16", "int8")})


def test_plan_round_trips_through_its_files(tmp_path):
    plan = measured_plan()
    plan.save(tmp_path / PLAN_FILE)
    assert (tmp_path / SMOOTHING_FILE).exists()
    loaded = Plan.load(tmp_path / PLAN_FILE)
    assert loaded.version == PLAN_VERSION and loaded.variants == {4: "dense_masked", 256: "per_layer"}
    assert loaded.layers[FFN].kernels == {4: None, 256: int8(4)}  # batch sizes, ints again; kernels typed
    assert loaded.eager_variants == {4: "dense_masked", 256: "fp16_2of4"}
    assert loaded.layers[FFN].eager_kernels == {4: None, 256: fp16(5)}
    assert loaded.eager_model_ms[256]["dense_masked"] == 120.0
    assert loaded.shape_timings["fp16"]["3072x768"][256]["sparse_ms"] == {0: 9.8, 5: 9.0}
    assert torch.equal(loaded.layers[FFN].smoothing, plan.layers[FFN].smoothing)
    without_tensors = {name: dataclasses.replace(layer, smoothing=None) for name, layer in plan.layers.items()}
    assert dataclasses.replace(loaded, layers={}) == dataclasses.replace(plan, layers={})
    assert {name: dataclasses.replace(layer, smoothing=None) for name, layer in loaded.layers.items()} == without_tensors


def test_summary_counts_layers_and_reads_timings_by_batch_size():
    metrics = measured_plan().summary()
    assert (metrics["backend"], metrics["layers_2of4"], metrics["layers_dense"]) == ("cusparselt", 1, 2)
    assert metrics["layers"][BLOCKED] == {"kernel": "dense", "reason": "dense: weight is not 2:4 sparse"}
    assert metrics["by_batch"]["bs4"] == {"variant": "dense_masked", "layers_2of4": 0, "layers_int8": 0,
                                          "layers_int8_gelu": 0, "model_dense_masked_ms": 5.0,
                                          "model_accelerated_ms": 5.0, "model_speedup": 1.0}
    assert metrics["by_batch"]["bs256"]["layers_2of4"] == 1 and metrics["by_batch"]["bs256"]["layers_int8"] == 1
    assert metrics["by_batch"]["bs256"]["model_speedup"] == round(100 / 92, 3)
    assert metrics["layers"][FFN]["bs256"] == {"kernel": "cusparselt int8 alg_id 4", "dense_ms": 10.0,
                                               "sparse_ms": 8.0, "speedup": 1.25}
    # dense here: beside it, the fastest fp16 2:4 config it was timed against
    assert metrics["layers"][FFN]["bs4"] == {"kernel": "dense", "dense_ms": 1.0, "sparse_ms": 1.1, "speedup": 0.909}
    # the model run eagerly: its own variant per batch size, against dense run eagerly
    assert metrics["eager_by_batch"]["bs256"] == {"variant": "fp16_2of4", "layers_2of4": 2, "layers_int8": 0,
                                                  "layers_int8_gelu": 0, "model_dense_masked_ms": 120.0,
                                                  "model_accelerated_ms": 110.0, "model_speedup": round(120 / 110, 3)}
    assert metrics["eager_by_batch"]["bs4"]["variant"] == "dense_masked"


def test_a_dense_plan_summarizes_without_timings_and_still_reports_every_layer():
    plan = dataclasses.replace(measured_plan(), backend=None, reason="dense: no CUDA device", model_ms={},
                               variants={}, eager_variants={}, eager_model_ms={}, shape_timings={},
                               layers={QUERY: LayerPlan((768, 768), reason="dense: no CUDA device"),
                                       FFN: LayerPlan((3072, 768))})
    # reports/accelerate.json is a declared output: it is written on a CPU too
    assert plan.summary() == {"mode": "auto", "precision": "int8", "backend": "dense",
                              "reason": "dense: no CUDA device", "dtype": "float16", "layers_2of4": 0,
                              "layers_dense": 2,
                              "layers": {QUERY: {"kernel": "dense", "reason": "dense: no CUDA device"},
                                         FFN: {"kernel": "dense", "reason": "dense: no CUDA device"}}}


def test_a_plan_written_before_versions_fails_with_one_line_naming_both_versions(tmp_path):
    with pytest.raises(InputError) as old:
        Plan.load(PLAN_BEFORE_VERSIONS)
    message = str(old.value)
    assert "\n" not in message
    assert f"plan format version 0, this code reads version {PLAN_VERSION}" in message
    assert "dvc repro accelerate" in message
    newer = tmp_path / PLAN_FILE
    newer.write_text(PLAN_BEFORE_VERSIONS.read_text().replace("{", '{"version": 7, ', 1))
    with pytest.raises(InputError, match=f"plan format version 7, this code reads version {PLAN_VERSION}"):
        Plan.load(newer)


def test_kernel_configs_key_the_kernels_by_token_count():
    plan = measured_plan()
    ffn = plan.linear_config(FFN)
    assert ffn.input_scale == 0.05 and ffn.smoothing is plan.layers[FFN].smoothing  # it may run int8
    assert ffn.kernels == {4 * 384: None, 256 * 384: int8(4)}
    assert plan.linear_config(QUERY) == SparseConfig({4 * 384: None, 256 * 384: None})
    # the eager model's Linears: the kernels timed fastest eagerly
    assert plan.linear_config(FFN, eager=True).kernels == {4 * 384: None, 256 * 384: fp16(5)}
    assert plan.linear_config(QUERY, eager=True).kernels == {4 * 384: None, 256 * 384: fp16(1)}
    assert plan.sparse_layers() == [FFN] and plan.sparse_layers(eager=True) == [FFN, QUERY]


def test_applied_on_a_cpu_int8_layers_compute_the_kernels_math_and_the_rest_stay():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    first, last = model[0], model[2]
    smoothing = torch.rand(8) + 0.5
    plan = dataclasses.replace(measured_plan(), layers={
        "0": LayerPlan((16, 8), "int8", {4: Kernel("int8", 1), 64: Kernel("fp16", 3)}, input_scale=0.02,
                       smoothing=smoothing),
        "2": LayerPlan((4, 16), "int8", {4: Kernel("fp16", 2)}, input_scale=0.02, smoothing=smoothing.repeat(2)),
    })
    x = torch.randn(3, 8)
    applied = plan.apply(model)
    # no 2:4 kernels on a CPU: int8 math where int8 runs at some batch size, else the plain Linear
    assert type(applied[0]) is Int8ReferenceLinear and applied[2] is last
    with torch.no_grad():
        expected = last(torch.relu(reference_linear(x, Int8Weights(first, smoothing, 0.02), first.bias)))
        assert torch.equal(applied(x), expected)


def test_the_eager_models_outputs_are_checked_at_each_batch_size_its_eager_kernels_run_2of4():
    """check_eager_outputs: one eager call per batch size where the eager kernels run 2:4 (256 in
    measured_plan, none at 4), at seq_length - 1, the error of the model handed to it vs dense."""
    from transformers import BertConfig, BertForQuestionAnswering

    from engine.planner import check_eager_outputs, sparse_batches

    torch.manual_seed(0)
    dense = BertForQuestionAnswering(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                intermediate_size=64, vocab_size=50)).eval()
    plan = dataclasses.replace(measured_plan(), seq_length=8)
    assert sparse_batches(plan) == [256] == sparse_batches(plan, eager=True)
    plan.layers[QUERY].eager_kernels = {4: fp16(1), 256: None}  # now 2:4 eagerly at batch 4 too
    assert sparse_batches(plan, eager=True) == [4, 256]
    shapes = []

    def off_by_a_tenth(input_ids):
        shapes.append(tuple(input_ids.shape))
        out = dense(input_ids=input_ids)
        return dataclasses.replace(out, start_logits=out.start_logits * 1.1, end_logits=out.end_logits)

    errors = check_eager_outputs(dense, off_by_a_tenth, plan)
    assert shapes == [(4, 7), (256, 7)]
    assert set(errors) == {"bs4_seq7_eager_kernels", "bs256_seq7_eager_kernels"}
    assert all(err == pytest.approx(0.1, rel=1e-3) for err in errors.values())
    assert check_eager_outputs(dense, dense, plan) == dict.fromkeys(errors, 0.0)


@pytest.fixture
def planned_model(tiny_model, tmp_path) -> Path:
    """The tiny model beside a CPU plan of its own: every Linear dense, the first one int8."""
    import shutil

    from engine.adapters import encoder_linears
    from engine.plan import inference_model

    out = tmp_path / "accelerated"
    shutil.copytree(tiny_model, out)
    linears = encoder_linears(inference_model(out, torch.device("cpu"), torch.float32))
    layers = {name: LayerPlan(tuple(linear.weight.shape)) for name, linear in linears.items()}
    first = next(iter(layers))
    layers[first] = LayerPlan(layers[first].shape, "int8", input_scale=0.05,
                              smoothing=torch.ones(layers[first].shape[1]))
    Plan(mode="auto", precision="int8", backend=None, reason="dense: no CUDA device", dtype="float32",
         compiled=False, batch_sizes=[1], seq_length=32, layers=layers, adapter="bert").save(out / PLAN_FILE)
    return out


def test_a_plan_from_before_model_adapters_still_loads_and_applies(planned_model):
    import json

    from engine.plan import load_accelerated

    raw = json.loads((planned_model / PLAN_FILE).read_text())
    assert raw.pop("adapter") == "bert"
    (planned_model / PLAN_FILE).write_text(json.dumps(raw))
    assert Plan.load(planned_model / PLAN_FILE).adapter == ""  # not recorded
    model = load_accelerated(planned_model, torch.device("cpu"))
    assert sum(isinstance(module, Int8ReferenceLinear) for module in model.modules()) == 1


def first_name(raw: dict) -> str:
    return next(iter(raw["layers"]))


def last_name(raw: dict) -> str:
    return list(raw["layers"])[-1]


def first_layer(raw: dict) -> dict:
    return raw["layers"][first_name(raw)]


def last_layer(raw: dict) -> dict:
    return raw["layers"][last_name(raw)]


def extra_layer(raw: dict) -> None:
    raw["layers"]["bert.encoder.layer.9.output.dense"] = dict(last_layer(raw))


TAMPERINGS = {
    "extra key": (lambda raw: raw.update(colour="blue"), "unknown field 'colour'"),
    "missing key": (lambda raw: raw.pop("seq_length"), "missing field 'seq_length'"),
    "layers as a list": (lambda raw: raw.update(layers=list(raw["layers"].values())), "field 'layers' = ["),
    "bad kernel entry": (lambda raw: first_layer(raw).update(kernels={"1": ["fp32", 0]}), ".kernels' = "),
    "int8 without its smoothing file": (None, SMOOTHING_FILE),
    "a layer the model lacks": (extra_layer, "field 'layers.bert.encoder.layer.9.output.dense': the model has no"),
    "wrong shape": (lambda raw: last_layer(raw).update(shape=[7, 7]), ".shape' = [7, 7], the model's Linear is"),
    "version as a string": (lambda raw: raw.update(version="3"), "field 'version' = '3' is invalid"),
    "another model adapter": (lambda raw: raw.update(adapter="distilbert"),
                              "field 'adapter' = 'distilbert', the model's adapter is 'bert'"),
    "a GELU pair the model lacks": (lambda raw: raw.update(gelu_pairs={first_name(raw): last_name(raw)}),
                                    "field 'gelu_pairs.bert.encoder.layer.0.attention.self.qkv': not a GELU pair"),
}


@pytest.mark.parametrize("tampering", TAMPERINGS)
def test_a_tampered_plan_fails_on_load_with_one_line_naming_the_field(planned_model, tampering):
    import json

    from engine.plan import load_accelerated
    from flows.common import is_input_error

    load_accelerated(planned_model, torch.device("cpu"))  # as saved, it applies
    edit, expected = TAMPERINGS[tampering]
    if edit is None:
        (planned_model / SMOOTHING_FILE).unlink()
    else:
        raw = json.loads((planned_model / PLAN_FILE).read_text())
        edit(raw)
        (planned_model / PLAN_FILE).write_text(json.dumps(raw))
    with pytest.raises(InputError) as err:
        load_accelerated(planned_model, torch.device("cpu"))
    message = str(err.value)
    assert "\n" not in message and expected in message and str(planned_model) in message, message
    assert is_input_error(err.value)  # evaluate and benchmark fail at once, no retry
