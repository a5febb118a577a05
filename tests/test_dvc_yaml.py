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


def evaluate_load_paths(path) -> set[str]:
    """The repository paths given to `evaluate.load(...)` in the file: string literals in the call,
    or module-level string constants it names (`evaluate.load(str(REPO / SQUAD_METRIC))`)."""
    tree = ast.parse(path.read_text())
    constants = {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                 for target in node.targets if isinstance(target, ast.Name)}
    found = set()
    for call in ast.walk(tree):
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "load"
                and isinstance(call.func.value, ast.Name) and call.func.value.id == "evaluate" and call.args):
            for node in ast.walk(call.args[0]):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    found.add(node.value)
                elif isinstance(node, ast.Name) and node.id in constants:
                    found.add(constants[node.id])
    return found


def evaluate_module_script(path: str) -> str:
    """What `evaluate.load` runs for a local path: the script itself, or <dir>/<dir name>.py."""
    return path if path.endswith(".py") else f"{path}/{path.rstrip('/').split('/')[-1]}.py"


@pytest.mark.parametrize("name", list(STAGES))
def test_every_evaluate_module_a_stage_loads_is_a_dependency(name):
    loaded = {evaluate_module_script(p) for path in stage_files(STAGES[name]) for p in evaluate_load_paths(REPO / path)}
    assert all((REPO / script).is_file() for script in loaded), f"stage {name}: evaluate.load of a missing script {loaded}"
    missing = sorted(loaded - set(STAGES[name]["deps"]))
    assert not missing, f"dvc.yaml stage {name}: loads evaluate modules {missing} but does not list them in deps"


def test_evaluate_load_check_sees_literals_and_named_constants(tmp_path):
    source = tmp_path / "stage.py"
    source.write_text('METRIC = "metrics_lib/m"\nOTHER = "x"\ndef f(evaluate, REPO):\n'
                      '    return evaluate.load(str(REPO / METRIC)), evaluate.load("lib/n/n.py"), OTHER\n')
    assert evaluate_load_paths(source) == {"metrics_lib/m", "lib/n/n.py"}
    assert evaluate_module_script("metrics_lib/m") == "metrics_lib/m/m.py"


@pytest.mark.parametrize("name", list(STAGES))
def test_every_module_a_stage_runs_is_a_dependency(name):
    missing = sorted(stage_files(STAGES[name]) - set(STAGES[name]["deps"]) - EMPTY_INITS)
    assert not missing, f"dvc.yaml stage {name}: imports {missing} but does not list them in deps"


@pytest.mark.parametrize("name", list(STAGES))
def test_every_params_field_read_is_declared(name):
    """Reads of params["section.field"] anywhere in the stage's import closure are covered by the
    stage's params (the field itself or its whole section)."""
    declared = {p for entry in STAGES[name].get("params", []) for p in ([entry] if isinstance(entry, str) else entry)}
    if "params.yaml" in declared:  # the whole file
        return
    read = {key for path in stage_files(STAGES[name]) for key in params_read(REPO / path)}
    read = {key for key in read if not key.startswith("orchestration")}  # Prefect's retries, not the result
    missing = sorted(key for key in read if key not in declared and key.split(".")[0] not in declared)
    assert not missing, f"dvc.yaml stage {name}: reads params {missing} but does not declare them"


def test_params_check_sees_subscripts_not_docstrings(tmp_path):
    source = tmp_path / "stage.py"
    source.write_text('"""params["in.docstring"]"""\ndef f(params):\n    return params["train.epochs"], params[\'seed\']\n')
    assert params_read(source) == {"train.epochs", "seed"}


def test_data_folder_is_tokenize_dependency():
    assert "${data.dir}" in STAGES["tokenize"]["deps"] and "${data.dir}" in STAGES["validate"]["deps"]
    assert (REPO / PARAMS["data"]["dir"]).is_dir()


def declared(stage: dict, kind: str) -> list[str]:
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in stage.get(kind, [])]


def test_the_only_plots_are_the_three_svg_charts_and_the_only_metric_the_scores():
    """`dvc plots show` draws images, which show offline (DVC's Vega templates need a CDN, and a
    JSON data file it would draw with guessed axes: learning rate over row numbers); `dvc metrics
    show` shows the scores alone, every stage's report is a cached out."""
    assert "plots" not in DVC_YAML
    assert [path for stage in STAGES.values() for path in declared(stage, "plots")] == [
        "plots/loss.svg", "plots/latency.svg", "plots/f1.svg"]
    assert [path for stage in STAGES.values() for path in declared(stage, "metrics")] == ["metrics/scores.json"]
    missing = [name for name, stage in STAGES.items() if f"reports/{name}.json" not in declared(stage, "outs")]
    assert not missing, f"dvc.yaml stages {missing}: reports/<stage>.json is not an out"


def test_model_directory_as_a_dependency(tmp_path):
    """A local model directory (model.name, watched through model.watch): replacing its weights makes
    the stages that read it stale in `dvc status`."""
    import sys

    from conftest import make_project, sh

    root, env = make_project(tmp_path)
    dvc = [sys.executable, "-m", "dvc"]
    for directory in ("features", "models/baseline"):  # the two stages' outputs, as if they had run
        (root / directory).mkdir(parents=True)
        (root / directory / "part").write_text(directory)
    for report in ("reports/validate.json", "reports/tokenize.json", "reports/train_baseline.json",
                   "plots/train_baseline_loss_history.json"):
        (root / report).parent.mkdir(exist_ok=True)
        (root / report).write_text("{}")
    sh(dvc + ["commit", "--force", "tokenize", "train_baseline"], root, env)
    assert "up to date" in sh(dvc + ["status", "tokenize", "train_baseline"], root, env).stdout
    weights = root / "tiny-model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))  # other weights, same size
    status = sh(dvc + ["status", "tokenize", "train_baseline"], root, env).stdout
    assert status.count("modified:") == 2 and "tiny-model" in status, status


def test_validate_runs_first_reads_all_params_and_never_loses_its_stamp():
    """Every other stage comes after validate (through tokenize), which depends on all of params.yaml
    and whose stamp DVC does not remove before running it: a bad value fails having removed nothing."""
    assert list(STAGES)[0] == "validate" and {"params.yaml": None} in STAGES["validate"]["params"]
    assert STAGES["validate"]["outs"] == [{"reports/validate.json": {"persist": True}}]
    assert "reports/validate.json" in STAGES["tokenize"]["deps"]
    produced_by = {out: name for name, stage in STAGES.items() for out in declared(stage, "outs")}
    for name, stage in STAGES.items():
        upstream, pending = set(), [name]
        while pending:
            for dep in STAGES[pending.pop()].get("deps", []):
                if dep in produced_by and produced_by[dep] not in upstream:
                    upstream.add(produced_by[dep])
                    pending.append(produced_by[dep])
        assert name == "validate" or "validate" in upstream, f"stage {name} does not come after validate"
