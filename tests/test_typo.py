"""A typo loses nothing: bad params or missing data fail in the validate stage, before DVC removes
any output; a stage that fails after DVC removed its outputs says how to get them back; and the
README's recovery leaves `dvc status` and `git status` clean. End to end on the tiny project, up to
prune (every case fails within seconds)."""
from __future__ import annotations

import hashlib
import json
import sys

import pytest
import yaml

from conftest import copy_project, sh


def digest(root) -> dict[str, str]:
    """A hash of every file under the outputs the stages so far wrote."""
    found = {}
    for top in ("features", "models", "reports", "plots"):
        for path in sorted((root / top).rglob("*")):
            if path.is_file():
                found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def project(pruned_project, tmp_path_factory):
    root, env = copy_project(pruned_project, tmp_path_factory.mktemp("typo") / "project")
    return root, env, digest(root)


def dvc(root, env, *args):
    return sh([sys.executable, "-m", "dvc", *args], root, env, check=False)


def edit_params(root, section: str, **values) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def assert_clean(root, env, outputs: dict) -> None:
    """Every output as it was, nothing for DVC or git to report."""
    assert digest(root) == outputs
    assert "up to date" in dvc(root, env, "status", "prune").stdout
    assert sh(["git", "status", "--porcelain"], root, env).stdout == ""


def recover(root, env) -> None:
    """The README's recovery: the change undone (params, data), the rest of the last commit's state
    (dvc.lock, the git-tracked scores and charts) back, DVC's outputs from its cache (of the stages
    up to prune: the later ones never ran here)."""
    sh(["git", "checkout", "--", "params.yaml", "data", "dvc.lock", "metrics", "plots"], root, env)
    sh([sys.executable, "-m", "dvc", "checkout", "--with-deps", "prune"], root, env)


@pytest.mark.parametrize("section, values, field", [
    ("train", {"learning_rate": "fast"}, "train.learning_rate"),
    ("data", {"train_files": ["biographies.jsn"]}, "data.train_files"),
    ("prune", {"metod": "wanda"}, "prune.metod"),
    ("model", {"name": "bert-base-casedd"}, "model.name=bert-base-casedd: no such local directory, and not a hub id"),
    ("tokenize", {"doc_stride": 40}, "tokenize.doc_stride' = 40 is invalid (expected < tokenize.max_length/2 = 32)"),
])
def test_a_bad_value_in_params_yaml_fails_in_one_line_before_dvc_removes_anything(project, section, values, field):
    root, env, outputs = project
    edit_params(root, section, **values)
    result = dvc(root, env, "repro", "prune")
    assert result.returncode != 0
    [line] = [line for line in result.stderr.splitlines() if line.startswith("twofour ")]
    assert line.startswith("twofour validate: error: params.yaml: ") and field in line
    assert "nothing was removed" in line and "git checkout params.yaml" in line
    assert digest(root) == outputs
    recover(root, env)
    assert_clean(root, env, outputs)


def test_a_mistyped_set_param_and_dvcs_own_suggestion_remove_nothing(project):
    root, env, outputs = project
    refused = dvc(root, env, "exp", "run", "prune", "-S", "prune.metod=wanda")
    assert refused.returncode != 0 and "+prune.metod=wanda" in refused.stderr  # DVC's suggestion
    assert digest(root) == outputs
    suggested = dvc(root, env, "exp", "run", "prune", "-S", "+prune.metod=wanda")
    assert suggested.returncode != 0
    assert "twofour validate: error: params.yaml: unknown field 'prune.metod' (did you mean 'prune.method'?)" in (
        suggested.stderr)
    assert digest(root) == outputs
    recover(root, env)
    assert_clean(root, env, outputs)


def test_the_pipeline_refuses_a_typo_or_a_missing_file_before_dvc_runs(project):
    root, env, outputs = project
    set_typo = sh([sys.executable, "-m", "flows.pipeline", "-S", "train.learning_rate=fast"], root, env, check=False)
    assert set_typo.returncode == 1 and "train.learning_rate" in set_typo.stderr
    edit_params(root, "data", train_files=["missing.json"])
    missing = sh([sys.executable, "-m", "flows.pipeline"], root, env, check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == ("twofour pipeline: error: params.yaml: data.train_files entry 'missing.json': "
                                      "no such file in data/embedded")
    assert digest(root) == outputs
    recover(root, env)
    assert_clean(root, env, outputs)


def test_a_stage_failing_after_dvc_removed_its_outputs_says_how_to_get_them_back(project):
    """Bad data inside a file that is there: only tokenize can tell, after DVC removed features/."""
    root, env, outputs = project
    data = root / "data/embedded/biographies.json"
    doc = json.loads(data.read_text())
    doc["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = -1
    data.write_text(json.dumps(doc))
    result = dvc(root, env, "repro", "prune")
    [line] = [line for line in result.stderr.splitlines() if line.startswith("twofour ")]
    assert line.startswith("twofour tokenize: error: ") and line.endswith(
        "; its last outputs come back with `dvc checkout tokenize`")
    assert not (root / "features").exists()
    recover(root, env)
    assert_clean(root, env, outputs)
