"""The GPU configuration (gpu/): the root pipeline's stages, run from gpu/ on gpu/params.yaml."""
from __future__ import annotations

import json
import sys

import pytest
import yaml

from conftest import GIT, REPO, make_project, sh, tiny_params
from flows.pipeline import summarize_repro
from stages.params import load_params

sys.path.insert(0, str(REPO / "gpu"))
from sync_dvc_yaml import gpu_dvc_yaml, rebased  # noqa: E402

STAGES = ["validate", "tokenize", "train_baseline", "prune", "finetune_sparse", "accelerate", "evaluate", "benchmark", "summary"]


def test_gpu_dvc_yaml_is_the_root_pipeline_rebased():
    expected = gpu_dvc_yaml((REPO / "dvc.yaml").read_text())
    assert (REPO / "gpu/dvc.yaml").read_text() == expected, "gpu/dvc.yaml is stale: run python gpu/sync_dvc_yaml.py"


def test_rebasing_moves_only_the_code_to_the_root():
    stage = {"cmd": "python -m flows.evaluate", "params": ["evaluate"], "outs": ["reports/evaluate.json"],
             "deps": ["${data.dir}", "features", "models/sparse", "stages/evaluate.py", "engine/plan.py",
                      "flows/common.py", "metrics_lib/squad_v1/squad_v1.py"]}
    assert rebased(stage) == {
        "cmd": "PYTHONPATH=.. python -m flows.evaluate", "params": ["evaluate"], "outs": ["reports/evaluate.json"],
        "deps": ["${data.dir}", "features", "models/sparse", "../stages/evaluate.py", "../engine/plan.py",
                 "../flows/common.py", "../metrics_lib/squad_v1/squad_v1.py"]}


def test_gpu_params_are_full_squad_with_the_squad_recipe():
    params = load_params(REPO / "gpu/params.yaml")
    assert params["data.dir"] == "../data/squad-v1.1"
    assert params["data.train_files"] == ["train-v1.1.json.gz"]
    assert params["data.validation_files"] == ["dev-v1.1.json.gz"]
    assert params["data.max_train_examples"] == params["data.max_validation_examples"] == 0  # all of them
    assert (params["prune.method"], params["prune.sequential"]) == ("sparsegpt", True)
    assert (params["train.epochs"], params["finetune.epochs"], params["finetune.distill"]) == (2, 4, True)
    assert params["accelerate.precision"] == "int8"
    assert params["benchmark.batch_sizes"] == [16, 64, 256]
    # The data folder is tracked (its README says where the files come from), the files are not.
    assert (REPO / "data/squad-v1.1/README.md").is_file()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the repository whose gpu/params.yaml is turned down to the tiny model and data."""
    root, env = make_project(tmp_path_factory.mktemp("gpu-project"))
    params = tiny_params("../tiny-model")
    params["data"]["dir"] = "../data/embedded"
    (root / "gpu/params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(GIT + ["commit", "-qam", "tiny gpu params"], root, env)
    return root, env


def dvc(project, *args):
    root, env = project
    return sh([sys.executable, "-m", "dvc", *args], root, env)


def test_gpu_pipeline_runs_in_its_folder_and_leaves_the_default_alone(project):
    root, _ = project
    result = dvc(project, "repro", "gpu/dvc.yaml")
    assert summarize_repro(result.stdout)["ran"] == STAGES
    for stage in STAGES[1:]:  # validate's stamp holds no run facts: the same bytes for any valid params
        assert json.loads((root / f"gpu/reports/{stage}.json").read_text())["run"]["wall_s"] > 0
    assert (root / "gpu/models/accelerated/plan.json").is_file()
    scores = json.loads((root / "gpu/metrics/scores.json").read_text())
    assert set(scores["f1"]) == {"dense", "pruned", "sparse", "accelerated"}
    assert scores["accelerated"]["f1"] == scores["f1"]["accelerated"] and scores["accelerated"]["latency"]
    # nothing of the default pipeline was made or touched
    assert not (root / "features").exists() and not (root / "models/baseline").exists()
    assert not list((root / "reports").glob("*.json"))
    assert sh(["git", "status", "--porcelain", "params.yaml", "dvc.lock", "metrics"], root, project[1]).stdout == ""

    # both pipelines' scores are listed side by side; the GPU one is up to date on a second run
    shown = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    files = {path for workspace in shown.values() for path in workspace["data"]}
    assert {"metrics/scores.json", "gpu/metrics/scores.json"} <= files
    again = dvc(project, "repro", "gpu/dvc.yaml")
    assert summarize_repro(again.stdout)["ran"] == []

    # one accelerate param changed in gpu/params.yaml: DVC holds stale the stages that read it
    # (accelerate; benchmark, whose 8-bit dense baseline is smoothed alike; validate, which checks every
    # params change), nothing before them. What reruns after a changed stage is DVC's own rule, run
    # through in test_pipeline on the same stages.
    params = yaml.safe_load((root / "gpu/params.yaml").read_text())
    params["accelerate"]["int8_smoothing"] = 0.5
    (root / "gpu/params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = json.loads(dvc(project, "status", "gpu/dvc.yaml", "--json").stdout)
    assert set(stale) == {f"gpu/dvc.yaml:{stage}" for stage in ("validate", "accelerate", "benchmark")}
