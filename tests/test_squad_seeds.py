"""benchmarks/squad_seeds.py: the held-out split, recipes and --final, resuming, and a whole tiny study."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import yaml

from conftest import EMBEDDED_DATA, REPO, SHARED_DATA

sys.path.insert(0, str(REPO / "benchmarks"))
import squad_table  # noqa: E402
from squad_seeds import (arguments, built, feature_sets, full_data_params, logged, parse_overrides,  # noqa: E402
                         recipe_hash, run_recipe, with_overrides)
from stages.params import validate  # noqa: E402
from stages.tokenize import load_splits  # noqa: E402



def parsed(*argv):
    return arguments().parse_args(["--data-dir", "data", "--train", "train.json.gz", "--out", "out", *argv])


def heldout_split(data_dir, train, recipe):
    """(train, held-out) examples as tokenize reads them for a selection run of `recipe`."""
    args = parsed()
    args.data_dir, args.train = data_dir, train
    return load_splits(validate(feature_sets(full_data_params(), args, recipe)["heldout"]))


def titles(examples):
    return {example["title"] for example in examples}


def test_overrides_read_as_yaml_into_the_params():
    raw = with_overrides({"train": {"epochs": 1}, "data": {"train_files": []}},
                         parse_overrides(["train.epochs=1.5", "data.train_files=[a.json.gz]"]))
    assert raw == {"train": {"epochs": 1.5}, "data": {"train_files": ["a.json.gz"]}}
    with pytest.raises(SystemExit, match="expected key=value"):
        parse_overrides(["train.epochs"])


def test_the_heldout_split_is_five_percent_of_the_articles_seeded_and_never_trained_on():
    recipe = run_recipe(parsed())
    train, heldout = heldout_split(EMBEDDED_DATA.parent, EMBEDDED_DATA.name, recipe)
    assert not titles(train) & titles(heldout)  # no article on both sides
    assert len(titles(heldout)) == math.ceil(0.05 * 200) == 10 and len(titles(train)) == 190
    assert len(heldout) + len(train) == 4800 and 0.03 < len(heldout) / 4800 < 0.08
    again_train, again = heldout_split(EMBEDDED_DATA.parent, EMBEDDED_DATA.name, run_recipe(parsed()))
    assert [e["id"] for e in again] == [e["id"] for e in heldout] and len(again_train) == len(train)
    recipe["heldout"]["seed"] += 1
    assert titles(heldout_split(EMBEDDED_DATA.parent, EMBEDDED_DATA.name, recipe)[1]) != titles(heldout)


@pytest.mark.skipif(not (SHARED_DATA / "squad-v1.1").is_dir(), reason="official SQuAD files not on this machine")
def test_the_heldout_split_of_squad_train():
    train, heldout = heldout_split(SHARED_DATA / "squad-v1.1", "train-v1.1.json.gz", run_recipe(parsed()))
    assert not titles(train) & titles(heldout)
    assert len(titles(heldout)) == math.ceil(0.05 * 442) == 23 and len(train) + len(heldout) == 87_599
    assert 0.03 < len(heldout) / 87_599 < 0.08


def test_dev_is_scored_only_with_a_final_recipe_file():
    for flag in ("--validation", "--extra-validation"):
        with pytest.raises(SystemExit, match="scored only with --final RECIPE_FILE"):
            run_recipe(parsed(flag, "dev-v1.1.json.gz"))
    with pytest.raises(SystemExit, match="name SQuAD dev with --validation"):
        run_recipe(parsed("--final", "recipe.yaml"))


def test_a_final_recipe_fixes_every_setting_and_keeps_the_selection_runs_hash(tmp_path):
    selection = run_recipe(parsed("-S", "finetune.epochs=6", "-S", "model.name=/a/model", "--control"))
    file = tmp_path / "recipe.yaml"
    file.write_text(yaml.safe_dump({"seeds": [1, 2, 3, 4, 5], "variants": ["control", "int8"],
                                    "heldout": {"fraction": 0.05, "seed": 0}, "params": {"finetune.epochs": 6}}))
    final = run_recipe(parsed("--validation", "dev.json", "--final", str(file), "-S", "model.name=/b/model",
                              "--seeds", "4", "5"))
    assert final["params"] == {"finetune.epochs": 6, "model.name": "/b/model"} and final["seeds"] == [4, 5]
    # where the model lies, the seeds and the variants are not the settings: the dev scores trace to the selection
    assert recipe_hash(final) == recipe_hash(selection) != recipe_hash(run_recipe(parsed("-S", "finetune.epochs=4")))
    with pytest.raises(SystemExit, match="-S finetune.epochs: the recipe file fixes every setting"):
        run_recipe(parsed("--validation", "dev.json", "--final", str(file), "-S", "finetune.epochs=8"))
    with pytest.raises(SystemExit, match="--seeds: 6 is not among"):
        run_recipe(parsed("--validation", "dev.json", "--final", str(file), "--seeds", "5", "6"))
    with pytest.raises(SystemExit, match="no --recipe, --control or --int8"):
        run_recipe(parsed("--validation", "dev.json", "--final", str(file), "--int8"))


@pytest.mark.parametrize("recipe, message", [
    ({"params": {}, "epochs": 4}, "unknown field 'epochs'"),
    ({"heldout": {"fraction": 5, "seed": 0}}, "field 'heldout.fraction': expected a number between 0 and 1"),
    ({"seeds": [1, 1]}, "field 'seeds': expected a non-empty list of distinct whole numbers"),
    ({"variants": ["gradual"]}, "field 'variants': expected a list of control, int8"),
])
def test_a_bad_recipe_file_fails_in_one_line_naming_the_file_and_field(tmp_path, recipe, message):
    file = tmp_path / "recipe.yaml"
    file.write_text(yaml.safe_dump(recipe))
    with pytest.raises(SystemExit, match=f"^{file}: {message}"):
        run_recipe(parsed("--recipe", str(file)))


def test_the_committed_recipes_load():
    recipes = sorted((REPO / "docs" / "results" / "squad-recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        recipe = run_recipe(parsed("--recipe", str(path)))
        validate(with_overrides(full_data_params(), recipe["params"]), str(path))


def test_a_model_is_built_whole_or_not_at_all_and_never_twice(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp)
        (tmp / "model.safetensors").write_text("weights")

    def killed(tmp):
        (tmp / "model.safetensors").write_text("half")
        raise KeyboardInterrupt  # a time limit's signal, mid-write

    with pytest.raises(KeyboardInterrupt):
        built(tmp_path / "dense-1", killed)
    assert not (tmp_path / "dense-1").exists() and not list(tmp_path.iterdir())
    built(tmp_path / "dense-1", build)
    built(tmp_path / "dense-1", build)
    assert len(calls) == 1 and (tmp_path / "dense-1" / "model.safetensors").read_text() == "weights"


def test_scores_already_logged_are_known_by_seed_variant_and_set_within_a_recipe(tmp_path):
    results = tmp_path / "results.jsonl"
    assert logged(results, "abc") == set()
    results.write_text("\n".join(json.dumps(r) for r in [
        {"tokenize": "heldout"}, {"seed": 1, "variant": "dense", "on": "heldout", "f1": 80.0, "recipe": "abc"},
        {"seed": 2, "variant": "dense", "on": "heldout", "f1": 81.0, "recipe": "other"}]) + "\n")
    assert logged(results, "abc") == {(1, "dense", "heldout")}


def study_files(tmp_path):
    """A tiny SQuAD: 30 biography articles to train on (and hold out of), 3 others as its dev."""
    data = json.loads(EMBEDDED_DATA.read_text())["data"]
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.json").write_text(json.dumps({"data": data[:30]}))
    (folder / "dev.json").write_text(json.dumps({"data": data[30:33]}))
    return folder


def study(tmp_path, tiny_model, *argv):
    tiny = [f"model.name={tiny_model}", f"model.watch={tiny_model}"]
    settings = ["data.max_train_examples=48", "data.max_validation_examples=24", "tokenize.max_length=64",
                "tokenize.doc_stride=16", "train.max_steps=3", "train.batch_size=8", "finetune.max_steps=2",
                "finetune.batch_size=8", "evaluate.batch_size=16", "prune.calibration_batches=2",
                "prune.calibration_batch_size=8"]
    command = [sys.executable, str(REPO / "benchmarks" / "squad_seeds.py"), "--data-dir", str(tmp_path / "data"),
               "--train", "train.json", "--out", str(tmp_path / "out"), "--parallel", "1", *argv]
    if "--final" not in argv:
        command += [arg for setting in settings for arg in ("-S", setting)]
    command += [arg for setting in tiny for arg in ("-S", setting)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"})
    logs = "".join(path.read_text() for path in sorted((tmp_path / "out").glob("seed-*.log")))
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}\n{logs[-3000:]}"
    return result.stdout


def test_a_tiny_study_selects_on_the_heldout_split_then_scores_dev_with_the_same_models(tmp_path, tiny_model):
    study_files(tmp_path)
    out = tmp_path / "out"
    printed = study(tmp_path, tiny_model, "--seeds", "1", "--control", "--int8")
    [recipe_file] = out.glob("recipe-*.yaml")
    selection = squad_table.read_records(out / "results.jsonl")
    assert {(r["variant"], r["on"]) for r in selection} == {
        (variant, "heldout") for variant in ("dense", "control", "sparse", "int8", "zero-shot-magnitude",
                                             "zero-shot-wanda", "zero-shot-sparsegpt")}
    recipe = yaml.safe_load(recipe_file.read_text())
    assert recipe["variants"] == ["control", "int8"] and "model.name" not in recipe["params"]
    assert {r["recipe"] for r in selection} == {recipe_file.stem.removeprefix("recipe-")}
    first = selection[0]
    assert len(first["commit"]) == 40 and len(first["code"]) == 12 and first["versions"]["torch"]
    assert "sparse - dense" in printed and "sparse - control" in printed and "int8 - sparse" in printed
    models = {path.name: path.stat().st_mtime_ns for path in (out / "work").iterdir() if not path.name.startswith(".")}
    assert {name.split("-")[0] for name in models} >= {"dense", "control", "sparse", "int8", "pruned", "features"}

    study(tmp_path, tiny_model, "--validation", "dev.json", "--final", str(recipe_file))
    records = squad_table.read_records(out / "results.jsonl")
    final = records[len(selection):]
    assert {(r["variant"], r["on"]) for r in final} == {(variant, "dev") for variant, _ in
                                                        {(r["variant"], r["on"]) for r in selection}}
    assert {r["recipe"] for r in final} == {first["recipe"]} and all("train_s" not in r for r in final)
    # the selection's models scored, none trained again; dev's features are the only new folder
    after = {path.name: path.stat().st_mtime_ns for path in (out / "work").iterdir() if not path.name.startswith(".")}
    assert {name: after[name] for name in models} == models
    assert [name for name in after if name not in models] == [n for n in after if n.startswith("features-dev-")]
    # the control is a model of its own: the baseline trained on, not the baseline again
    [dense], [control] = ((out / "work").glob(f"{name}-1-*") for name in ("dense", "control"))
    assert (dense / "model.safetensors").read_bytes() != (control / "model.safetensors").read_bytes()
