"""End to end: the real `dvc repro` (with its Prefect flows) on a tiny BERT and tiny data, in a copy."""
from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml

from conftest import GIT, REPO, make_project, sh
from flows.pipeline import summarize_repro

STAGES = ["validate", "tokenize", "train_baseline", "prune", "finetune_sparse", "accelerate", "evaluate", "benchmark",
          "summary"]
VARIANTS = ["dense", "pruned", "sparse", "accelerated"]


def ran_stages(output: str) -> list[str]:
    return summarize_repro(output)["ran"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("project"))


def dvc(project, *args):
    root, env = project
    return sh([sys.executable, "-m", "dvc", *args], root, env)


def report(root, stage: str) -> dict:
    return json.loads((root / f"reports/{stage}.json").read_text())


def test_repro_runs_all_stages_and_writes_reports_and_scores(project):
    root, _ = project
    result = dvc(project, "repro")
    assert ran_stages(result.stdout) == STAGES
    assert "gpu/dvc.yaml" not in result.stdout  # the default is dvc.yaml alone: gpu/ (stale here, no data) stays out

    evaluation = report(root, "evaluate")
    for variant in VARIANTS:
        assert 0 <= evaluation[variant]["f1"] <= 100
        assert 0 <= evaluation[variant]["exact_match"] <= evaluation[variant]["f1"]
    # On a CPU the accelerated model is the sparse model under a dense plan: same predictions.
    for metric in ("exact_match", "f1"):
        assert evaluation["accelerated"][metric] == evaluation["sparse"][metric]
    assert all(evaluation[variant]["windows_per_s"] > 0 for variant in VARIANTS)

    assert report(root, "validate") == {"checked": "params.yaml (every field) and the data files it names"}
    for stage in STAGES[1:]:
        facts = report(root, stage)["run"]
        assert facts["device"] == "cpu" and facts["wall_s"] > 0 and facts["peak_memory_mb"] > 0
        assert facts["torch"] and facts["transformers"]
    prune = report(root, "prune")
    assert prune["pattern_2of4_holds"] and prune["sparsity_of_pruned_layers"] == 0.5
    assert all(layer["violations_2of4"] == 0 for layer in prune["layers"].values())
    loss = json.loads((root / "plots/train_baseline_loss_history.json").read_text())
    assert [row["step"] for row in loss][-1] == 3

    # every report a stage writes is a declared output (DVC would not see a stale one otherwise)
    declared = {out if isinstance(out, str) else next(iter(out))
                for stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].values()
                for out in stage.get("outs", [])}
    assert {f"reports/{p.name}" for p in (root / "reports").glob("*.json")} == {f"reports/{s}.json" for s in STAGES}
    assert {f"reports/{s}.json" for s in STAGES} <= declared

    # `dvc metrics show`: the scores file alone: F1 and EM per variant, the headline speedup (none on a
    # CPU: the accelerated model computes densely), and the accelerated model's F1 beside its latency
    scores = json.loads((root / "metrics/scores.json").read_text())
    assert scores["f1"] == {variant: evaluation[variant]["f1"] for variant in VARIANTS}
    assert scores["em"] == {variant: evaluation[variant]["exact_match"] for variant in VARIANTS}
    assert scores["speedup"] == "n/a (no 2:4 kernels on CPU)"
    latency = report(root, "benchmark")["latency_ms"]
    assert list(scores["accelerated"]["latency"]) == ["bs1", "bs2"]
    for key, row in scores["accelerated"]["latency"].items():
        assert (row["ms"], row["dense_ms"]) == (latency[key]["accelerated_eager"], latency[key]["dense_eager"])
    [workspace] = json.loads(dvc(project, "metrics", "show", "--json").stdout).values()
    assert sorted(workspace["data"]) == ["gpu/metrics/scores.json", "metrics/scores.json"]  # and the GPU run's
    table = dvc(project, "metrics", "show").stdout.splitlines()
    assert {"f1.accelerated", "em.dense", "speedup", "accelerated.latency.bs2.ms"} <= set(table[0].split())


def test_plots_show_draws_the_three_charts_without_network(project):
    """The page `dvc plots show` writes shows the stages' SVG images and loads no script."""
    root, _ = project
    dvc(project, "plots", "show", "--out", "plots-page")
    page = (root / "plots-page/index.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    charts = ["f1.svg", "latency.svg", "loss.svg"]
    assert sorted(images) == [f"static/workspace_gpu_plots_{chart}" for chart in charts] + [
        f"static/workspace_plots_{chart}" for chart in charts]  # the GPU run's committed charts beside these
    assert "<script" not in page and not re.search(r"https?://", page)
    svg = "{http://www.w3.org/2000/svg}"
    for image in images:
        assert ET.parse(root / "plots-page" / image).getroot().tag == f"{svg}svg"
        assert "href" not in (root / "plots-page" / image).read_text()  # an image that fetches nothing
    latency = ET.parse(root / "plots/latency.svg").getroot()
    assert [line.get("data-series") for line in latency.iter(f"{svg}polyline")] == ["dense", "accelerated"]
    bars = ET.parse(root / "plots/f1.svg").getroot()
    assert [bar.get("data-series") for bar in bars.iter(f"{svg}rect") if bar.get("data-series")] == VARIANTS


def test_second_repro_runs_nothing(project):
    result = dvc(project, "repro")
    assert summarize_repro(result.stdout) == {"ran": [], "cached": STAGES}


def test_metrics_and_plots_diff_against_a_commit_work_from_a_fresh_clone(project, tmp_path):
    """With no DVC remote a clone has git alone: the scores (EM, F1, latency) and the charts that
    `dvc metrics diff` and `dvc plots diff` read from a commit are in it."""
    root, env = project
    sh(GIT + ["add", "-A"], root, env)
    sh(GIT + ["commit", "-qm", "the tiny run"], root, env)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    assert not (clone / "models/baseline").exists() and not (clone / "reports/evaluate.json").exists()  # no DVC data
    diff = json.loads(sh([sys.executable, "-m", "dvc", "metrics", "diff", "HEAD~1", "--all", "--json"], clone,
                         env).stdout)["metrics/scores.json"]
    committed = json.loads((REPO / "metrics/scores.json").read_text())  # the tiny project's first commit
    tiny = json.loads((root / "metrics/scores.json").read_text())
    assert diff["f1.dense"] == {"old": committed["f1"]["dense"], "new": tiny["f1"]["dense"],
                                "diff": pytest.approx(tiny["f1"]["dense"] - committed["f1"]["dense"])}
    assert diff["em.sparse"]["new"] == tiny["em"]["sparse"]
    assert diff["accelerated.latency.bs2.ms"]["new"] == tiny["accelerated"]["latency"]["bs2"]["ms"]
    sh([sys.executable, "-m", "dvc", "plots", "diff", "HEAD~1", "--out", "page"], clone, env)
    images = re.findall(r'<img src="([^"]+)"', (clone / "page/index.html").read_text())
    # the three charts at both commits, and the GPU run's three (committed, unchanged) at both
    assert len(images) == 12 and all((clone / "page" / image).stat().st_size > 0 for image in images)


def test_prune_param_change_reruns_from_prune_only(project):
    root, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["prune"]["exclude"] = "pooler|attention"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = dvc(project, "repro")
    assert ran_stages(result.stdout) == ["validate", *STAGES[3:]]
    assert report(root, "prune")["layers_pruned"] == 4
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
    counts = report(root, "tokenize")
    dev_questions = sum(len(p["qas"]) for a in doc["data"][6:8] for p in a["paragraphs"])
    assert counts["validation_examples"] == min(dev_questions, params["data"]["max_validation_examples"])
    assert "changed deps" not in dvc(project, "status", "tokenize").stdout

    (squad / "dev.json.gz").write_bytes(gzip.compress(json.dumps({"version": "1.1", "data": doc["data"][8:9]}).encode()))
    status = dvc(project, "status", "tokenize").stdout
    assert "modified:" in status and "squad" in status
