"""dvc.yaml tells the truth: every repository module a stage's command imports, and every params
section or field its code reads, is a dependency of that stage, so no change goes unseen by DVC."""
from __future__ import annotations

import ast
import re

import pytest
import yaml

from conftest import REPO
from test_layout import imported_files

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
EMPTY_INITS = {"stages/__init__.py", "flows/__init__.py"}


def stage_files(stage: dict) -> set[str]:
    match = re.fullmatch(r"python -m flows\.(\w+)", stage["cmd"])
    assert match, f"cmd {stage['cmd']!r}: expected `python -m flows.<stage>`"
    return imported_files(REPO / "flows" / f"{match.group(1)}.py")


def params_read(path) -> set[str]:
    """The keys of every `params["..."]` subscript in the file's code."""
    return {node.slice.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "params"
            and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)}


@pytest.mark.parametrize("name", list(STAGES))
def test_every_module_a_stage_runs_is_a_dependency(name):
    missing = sorted(stage_files(STAGES[name]) - set(STAGES[name]["deps"]) - EMPTY_INITS)
    assert not missing, f"dvc.yaml stage {name}: imports {missing} but does not list them in deps"


@pytest.mark.parametrize("name", list(STAGES))
def test_every_params_field_read_is_declared(name):
    """Reads of params["section.field"] anywhere in the stage's import closure are covered by the
    stage's params (the field itself or its whole section)."""
    declared = {p for entry in STAGES[name].get("params", []) for p in ([entry] if isinstance(entry, str) else entry)}
    read = {key for path in stage_files(STAGES[name]) for key in params_read(REPO / path)}
    read = {key for key in read if not key.startswith("orchestration")}  # Prefect's retries, not the result
    missing = sorted(key for key in read if key not in declared and key.split(".")[0] not in declared)
    assert not missing, f"dvc.yaml stage {name}: reads params {missing} but does not declare them"


def test_params_check_sees_subscripts_not_docstrings(tmp_path):
    source = tmp_path / "stage.py"
    source.write_text('"""params["in.docstring"]"""\ndef f(params):\n    return params["train.epochs"], params[\'seed\']\n')
    assert params_read(source) == {"train.epochs", "seed"}


def test_data_folder_is_tokenize_dependency():
    assert "${data.dir}" in STAGES["tokenize"]["deps"]
    assert (REPO / PARAMS["data"]["dir"]).is_dir()
