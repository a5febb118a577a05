"""engine.accelerate, the one call a library user makes without the pipeline: its options, the calibration it
is given, a model directory written whole or not at all, a failed output check that keeps nothing, and
engine/README.md's walk-through run as written."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO
from engine import accelerate as engine_accelerate
from engine.accelerate import AccelerateOptions, Calibration, accelerate
from engine.adapters import encoder_linears
from engine.errors import InputError
from engine.kernels import Int8ReferenceLinear, Kernel
from engine.models import load_qa_model, load_tokenizer
from engine.plan import PLAN_FILE, Plan, load_accelerated
from engine.qa import QuestionAnswerer
from engine.sparsity import two_four_violations
from stages.prune import prune

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pruned(tiny_model, tmp_path_factory):
    from stages.params import validate
    from conftest import tiny_params

    params = tiny_params(tiny_model)
    params["prune"]["method"] = "magnitude"
    out = tmp_path_factory.mktemp("pruned")
    prune(validate(params), tiny_model, out)
    return out


@pytest.mark.parametrize("field, value, message", [
    ("mode", "fast", "AccelerateOptions.mode='fast': expected one of auto, all, none"),
    ("precision", "int4", "AccelerateOptions.precision='int4': expected one of fp16, int8"),
    ("batch_sizes", (16, 0), "AccelerateOptions.batch_sizes=(16, 0): expected positive integers"),
    ("int8_smoothing", 1.5, "AccelerateOptions.int8_smoothing=1.5: expected a number in [0, 1]"),
])
def test_bad_options_fail_in_one_line_naming_the_field(field, value, message):
    with pytest.raises(InputError) as caught:
        AccelerateOptions(**{field: value})
    assert str(caught.value) == message


def test_int8_calibrated_on_the_inputs_given_and_the_result_answers_questions(pruned, tmp_path):
    tokenizer = load_tokenizer(str(pruned))  # a tokenizer's batch, padded, as docs/pipeline.md shows
    batch = tokenizer(["Where was Ada born?", "When?", "Who wrote the notes?", "What did she study?"],
                      ["Ada was born in London in 1815."] * 2 + ["Ada wrote the notes on the engine."] * 2,
                      padding=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask"} and not batch["attention_mask"].all()
    given = Calibration(dict(batch), "4 questions of mine")
    options = AccelerateOptions(precision="int8", batch_sizes=(1, 2), seq_length=64)
    report = accelerate(pruned, tmp_path / "mine", options, given, device=CPU)
    default = accelerate(pruned, tmp_path / "random", options, device=CPU)

    assert report["int8"]["calibration"] == "4 questions of mine"
    assert default["int8"]["calibration"] == "16 x 128 random tokens"
    mine, random = Plan.load(tmp_path / "mine" / PLAN_FILE), Plan.load(tmp_path / "random" / PLAN_FILE)
    assert (mine.batch_sizes, mine.seq_length, mine.precision) == ([1, 2], 64, "int8")
    # The scales come from the inputs: other inputs, other scales.
    scales = {name: layer.input_scale for name, layer in mine.layers.items() if layer.input_scale is not None}
    assert scales and any(random.layers[name].input_scale != scale for name, scale in scales.items())
    assert report["device"] == {"device": "cpu", "torch": torch.__version__}
    assert report["reason"] == "dense: no CUDA device; int8 layers emulated exactly (float64) so evaluate scores them"

    model = load_accelerated(tmp_path / "mine", CPU)
    assert {name for name, module in model.named_modules() if isinstance(module, Int8ReferenceLinear)} == set(scales)
    answer = QuestionAnswerer.from_dir(tmp_path / "mine", device=CPU)("Where was Ada born?", "Ada was born in London.")
    assert set(answer) == {"answer", "score", "start", "end"}
    assert "Ada was born in London."[answer["start"]:answer["end"]] == answer["answer"]


def test_a_directory_that_is_not_empty_or_a_file_is_refused_untouched(pruned, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=f"{out}: not empty"):
        accelerate(pruned, out, device=CPU)
    assert [item.name for item in out.iterdir()] == ["notes.txt"]
    with pytest.raises(InputError, match=f"^{out / 'notes.txt'}: not a directory"):
        accelerate(pruned, out / "notes.txt", device=CPU)
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("exists", [False, True])
def test_a_failure_after_files_were_written_leaves_the_directory_as_it_was(pruned, tmp_path, monkeypatch, exists):
    out = tmp_path / "out"
    if exists:
        out.mkdir()

    def fails(plan):
        assert (out / PLAN_FILE).exists() and (out / "config.json").exists()  # written by then
        raise RuntimeError("a failure after the plan was saved")

    monkeypatch.setattr(Plan, "summary", fails)
    with pytest.raises(RuntimeError, match="after the plan was saved"):
        accelerate(pruned, out, device=CPU)
    assert (list(out.iterdir()) == []) if exists else not out.exists()


def test_accelerated_outputs_off_the_dense_model_fail_and_keep_nothing(pruned, tmp_path, monkeypatch):
    """The output check's verdict: a plan whose model errs past the bound is not kept (the GPU steps, the
    kernel timing and the loading, stand in: the decision and the cleanup are what is tested)."""
    def measure(plan, model, max_alg_id, budget, config):
        for layer in plan.layers.values():
            layer.kernels = {batch: Kernel("fp16", 0) for batch in plan.batch_sizes}
            layer.eager_kernels = dict.fromkeys(plan.batch_sizes)

    monkeypatch.setattr(engine_accelerate, "device_backend", lambda device: ("cusparselt", "a CPU standing in"))
    monkeypatch.setattr(engine_accelerate, "measure", measure)
    monkeypatch.setattr(engine_accelerate, "load_accelerated", lambda *args, **kwargs: None)
    monkeypatch.setattr(Plan, "summary", lambda plan: {"layers_2of4": len(plan.sparse_layers())})
    errors = {"bs1_seq64_eager": 1e-4, "bs1_seq64_graphed": 0.3}
    monkeypatch.setattr(engine_accelerate, "check_outputs", lambda dense, accelerated, plan: dict(errors))
    out = tmp_path / "out"
    with pytest.raises(InputError) as caught:
        accelerate(pruned, out, AccelerateOptions(batch_sizes=(1,), seq_length=64), device=CPU)
    assert str(caught.value) == (f"{pruned}: accelerated outputs differ from the masked dense model at bs1_seq64_graphed: "
                                 f"relative error 3.00e-01 > 0.002; nothing kept in {out}")
    assert not out.exists()

    errors["bs1_seq64_graphed"] = 1e-3  # within the bound: kept, with its errors reported
    report = accelerate(pruned, out, AccelerateOptions(batch_sizes=(1,), seq_length=64), device=CPU)
    assert report["output_relative_error"] == {"bs1_seq64_eager": 1e-4, "bs1_seq64_graphed": 1e-3}
    assert report["layers_2of4"] == len(Plan.load(out / PLAN_FILE).layers) > 0


def test_the_engine_readmes_walk_through_runs_from_a_dense_model_to_answers(tiny_model, tmp_path, monkeypatch, capsys):
    """engine/README.md's code, as written, on the tiny model (the names of its directories swapped)."""
    readme = (REPO / "engine" / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace('"my-qa-model"', repr(str(tiny_model))), "engine/README.md", "exec"), {})
    answer = eval(capsys.readouterr().out.strip().splitlines()[-1])
    assert "Ada Lovelace was born in London in 1815."[answer["start"]:answer["end"]] == answer["answer"] != ""
    plan = Plan.load(tmp_path / "my-accelerated" / PLAN_FILE)
    assert (plan.precision, plan.batch_sizes) == ("int8", [1, 16])
    pruned = load_qa_model(str(tmp_path / "my-2of4-model"))
    assert all(two_four_violations(linear.weight) == 0 for linear in encoder_linears(pruned).values())


def test_the_command_line_calibrates_on_a_squad_file_and_prints_the_summary(pruned, tmp_path, capsys):
    squad = REPO / "data" / "embedded" / "biographies.json"
    status = engine_accelerate.main([str(pruned), str(tmp_path / "out"), "--precision", "int8", "--batch-sizes", "1", "2",
                                     "--seq-length", "128", "--calibration", str(squad), "--device", "cpu"])
    out = capsys.readouterr().out
    assert status == 0
    summary = json.loads(out)
    assert summary["int8"]["calibration"] == "16 questions of biographies.json" and "layers" not in summary
    plan = Plan.load(tmp_path / "out" / PLAN_FILE)
    assert (plan.batch_sizes, plan.seq_length) == ([1, 2], 128)
    assert summary["int8"]["layers_int8_ok"] == sum(layer.precision == "int8" for layer in plan.layers.values()) > 0


@pytest.mark.parametrize("case, message", [
    ("missing", "{tmp}/absent.json: cannot read (No such file or directory)"),
    ("not squad", "{tmp}/other.json: not a SQuAD v1.1 file (KeyError: 'data')"),
    ("no questions", "{tmp}/empty.json: holds no questions"),
    ("bad device", "device 'gpu0': not a device torch knows (cuda, cpu, cuda:1, ...)"),
    ("not empty", "{tmp}: not empty (the accelerated model gets a directory of its own)"),
])
def test_the_command_line_fails_in_one_line(pruned, tmp_path, capsys, case, message):
    (tmp_path / "other.json").write_text('{"version": "1.1"}')
    (tmp_path / "empty.json").write_text('{"data": [{"title": "t", "paragraphs": []}]}')
    calibration = {"missing": "absent.json", "not squad": "other.json", "no questions": "empty.json"}.get(case)
    out = tmp_path if case == "not empty" else tmp_path / "out"
    argv = [str(pruned), str(out), "--precision", "int8", "--device", "gpu0" if case == "bad device" else "cpu"]
    argv += ["--calibration", str(tmp_path / calibration)] if calibration else []
    assert engine_accelerate.main(argv) == 1
    err = capsys.readouterr().err
    assert err == f"error: {message.format(tmp=tmp_path)}\n"
    assert not (tmp_path / "out").exists()
