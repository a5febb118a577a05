"""A real Prefect server on a free loopback port: stage flow runs, artifacts, the pipeline flow."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import copy_project, sh

# The stages after prune: the project comes reproduced up to prune (conftest.pruned_project).
STAGES = ["finetune_sparse", "accelerate", "evaluate", "benchmark", "summary"]
BEFORE = ["validate", "tokenize", "train_baseline", "prune"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`prefect server start` (SQLite) on 127.0.0.1; stopped by its process id."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")
    process = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start",
                                "--host", "127.0.0.1", "--port", str(port)],
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
    yield url
    os.killpg(process.pid, 15)
    process.wait(timeout=30)
    log.close()


def client(url):
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(url)


def artifacts_by_key(url, key):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with client(url) as c:
        return c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_pipeline_flow_runs_stages_visible_in_prefect(server, pruned_project, tmp_path):
    root, env = copy_project(pruned_project, tmp_path / "project", {"PREFECT_API_URL": server})
    first = sh([sys.executable, "-m", "flows.pipeline"], root, env)
    assert f"'ran': {STAGES}" in first.stdout

    with client(server) as c:
        flows = {f.id: f.name for f in c.read_flows()}
        runs = c.read_flow_runs()
    by_stage = {flows[r.flow_id]: r for r in runs}
    assert set(STAGES) | {"twofour-pipeline"} <= set(by_stage)
    pipeline_run = by_stage["twofour-pipeline"]
    for stage in STAGES:
        run = by_stage[stage]
        assert run.state.is_completed(), (stage, run.state)
        # the stages of one pipeline run carry its tags (the git commit, pipeline:<id>): found together
        assert set(run.tags) == set(pipeline_run.tags)
        assert any(t.startswith("git:") for t in run.tags) and any(t.startswith("pipeline:") for t in run.tags)
        [artifact] = artifacts_by_key(server, f"{stage.replace('_', '-')}-metrics")
        assert artifact.type == "table" and artifact.flow_run_id == run.id
    evaluate_table = json.loads(artifacts_by_key(server, "evaluate-metrics")[0].data)
    assert [row["variant"] for row in evaluate_table] == ["dense", "pruned", "sparse", "accelerated"]
    assert all(0 <= row["f1"] <= 100 for row in evaluate_table)
    benchmark_table = json.loads(artifacts_by_key(server, "benchmark-metrics")[0].data)
    assert [row["batch_size"] for row in benchmark_table] == ["bs1", "bs2"]
    assert all(row["speedup_eager"] > 0 for row in benchmark_table)

    second = sh([sys.executable, "-m", "flows.pipeline"], root, env)
    assert "'ran': []" in second.stdout
    summaries = sorted(artifacts_by_key(server, "pipeline-summary"), key=lambda a: a.created)
    assert len(summaries) == 2
    assert f"**ran:** {', '.join(STAGES)}" in summaries[0].data
    assert f"**cached:** {', '.join(BEFORE)}" in summaries[0].data
    assert "**ran:** nothing" in summaries[1].data
    assert f"**cached:** {', '.join(BEFORE + STAGES)}" in summaries[1].data
    scores = summaries[1].data.split("| metrics/scores.json ")[0]  # `dvc metrics show` as a table: its header
    assert all(f" f1.{variant} |" in scores for variant in ("dense", "pruned", "sparse", "accelerated"))
    summary_table = json.loads(artifacts_by_key(server, "summary-metrics")[0].data)
    assert [row["score"] for row in summary_table][:4] == ["F1 dense", "F1 pruned", "F1 sparse", "F1 accelerated"]
