"""End to end: the real `dvc repro` (with its Prefect flows) on a tiny BERT and tiny data, in a copy."""
from __future__ import annotations

import json
import sys

import pytest
import yaml

from conftest import make_project, sh
from flows.pipeline import summarize_repro

STAGES = ["tokenize", "train_baseline", "prune", "finetune_sparse", "accelerate", "evaluate", "benchmark"]


def ran_stages(output: str) -> list[str]:
    return summarize_repro(output)["ran"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("project"))


def dvc(project, *args):
    root, env = project
    return sh([sys.executable, "-m", "dvc", *args], root, env)


def test_repro_runs_all_stages_and_writes_metrics(project):
    root, _ = project
    result = dvc(project, "repro")
    assert ran_stages(result.stdout) == STAGES

    scores = json.loads((root / "metrics/evaluate.json").read_text())
    for variant in ("dense", "pruned", "sparse", "accelerated"):
        assert 0 <= scores[variant]["f1"] <= 100 and 0 <= scores[variant]["exact_match"] <= scores[variant]["f1"]
    # On a CPU the accelerated model is the sparse model under a dense plan: same predictions.
    assert scores["accelerated"] == scores["sparse"]

    for stage in STAGES:
        facts = json.loads((root / f"metrics/{stage}.json").read_text())["run"]
        assert facts["device"] == "cpu" and facts["wall_s"] > 0 and facts["peak_memory_mb"] > 0
        assert facts["torch"] and facts["transformers"]
    prune = json.loads((root / "metrics/prune.json").read_text())
    assert prune["pattern_2of4_holds"] and prune["sparsity_of_pruned_layers"] == 0.5
    loss = json.loads((root / "plots/train_baseline_loss_history.json").read_text())
    assert [row["step"] for row in loss][-1] == 3
    latency = json.loads((root / "plots/benchmark_latency.json").read_text())
    assert sorted({row["batch_size"] for row in latency}) == [1, 2]
    assert {"dense eager", "accelerated eager"} <= {row["series"] for row in latency}
    assert all(row["latency_ms"] > 0 for row in latency)
    bars = json.loads((root / "plots/evaluate_scores.json").read_text())
    assert [row["variant"] for row in bars] == ["dense", "pruned", "sparse", "accelerated"]
    assert all(row["f1"] == scores[row["variant"]]["f1"] for row in bars)
    plots = json.loads(dvc(project, "plots", "show", "--json").stdout)
    assert sorted(plots["data"]) == ["Latency vs batch size per mode", "SQuAD F1 per variant",
                                     "Training loss, dense baseline vs sparse fine-tuning"]

    # every report a stage writes is a declared output (DVC would not see a stale one otherwise)
    declared = {out if isinstance(out, str) else next(iter(out))
                for stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].values()
                for out in stage.get("outs", [])}
    assert {f"reports/{p.name}" for p in (root / "reports").glob("*.json")} <= declared
    assert "reports/accelerate.json" in declared

    shown = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    flat = json.dumps(shown)
    assert '"f1"' in flat and "speedup" in flat


def test_second_repro_runs_nothing(project):
    result = dvc(project, "repro")
    assert summarize_repro(result.stdout) == {"ran": [], "cached": STAGES}


def test_prune_param_change_reruns_from_prune_only(project):
    root, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["prune"]["exclude"] = "pooler|attention"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = dvc(project, "repro")
    assert ran_stages(result.stdout) == STAGES[2:]
    assert json.loads((root / "metrics/prune.json").read_text())["layers_pruned"] == 4
    diff = dvc(project, "params", "diff", "--json").stdout
    assert "prune.exclude" in diff


def test_data_files_are_dependencies(project):
    """Pointing at SQuAD files (.json.gz, separate validation) reruns tokenize; so does editing one."""
    import gzip

    from conftest import EMBEDDED_DATA

    root, _ = project
    doc = json.loads(EMBEDDED_DATA.read_text())
    squad = root / "squad"
    squad.mkdir()
    for name, articles in (("train.json.gz", doc["data"][:6]), ("dev.json.gz", doc["data"][6:8])):
        (squad / name).write_bytes(gzip.compress(json.dumps({"version": "1.1", "data": articles}).encode()))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"].update(dir="squad", train_files=["train.json.gz"], validation_files=["dev.json.gz"])
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "tokenize" in dvc(project, "status", "tokenize").stdout
    dvc(project, "repro", "tokenize")
    counts = json.loads((root / "metrics/tokenize.json").read_text())
    dev_questions = sum(len(p["qas"]) for a in doc["data"][6:8] for p in a["paragraphs"])
    assert counts["validation_examples"] == min(dev_questions, params["data"]["max_validation_examples"])
    assert "changed deps" not in dvc(project, "status", "tokenize").stdout

    (squad / "dev.json.gz").write_bytes(gzip.compress(json.dumps({"version": "1.1", "data": doc["data"][8:9]}).encode()))
    status = dvc(project, "status", "tokenize").stdout
    assert "modified:" in status and "squad" in status
