"""DVC's run cache holds every stage: a param switched back to an earlier value restores the stage's
outputs, it does not rerun it. End to end on the tiny project reproduced up to prune (stays quick)."""
from __future__ import annotations

import sys

import yaml

from conftest import copy_project, sh
from flows.pipeline import summarize_repro


def repro_prune(root, env, method: str) -> str:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["prune"]["method"] = method
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return sh([sys.executable, "-m", "dvc", "repro", "prune"], root, env).stdout


def test_a_param_switched_back_restores_prune_from_the_run_cache(pruned_project, tmp_path):
    root, env = copy_project(pruned_project, tmp_path / "project")
    method = yaml.safe_load((root / "params.yaml").read_text())["prune"]["method"]
    other = "magnitude" if method != "magnitude" else "wanda"
    assert summarize_repro(sh([sys.executable, "-m", "dvc", "repro", "prune"], root, env).stdout)["ran"] == []
    runs = root / ".dvc" / "cache" / "runs"
    # one per stage but validate, which reruns (in well under a second) on any change of params.yaml
    assert len([key for prefix in runs.iterdir() for key in prefix.iterdir()]) == 3
    pruned = {p.name: p.read_bytes() for p in (root / "models/pruned").iterdir()}
    report = (root / "reports/prune.json").read_bytes()

    assert summarize_repro(repro_prune(root, env, other))["ran"] == ["validate", "prune"]
    back = repro_prune(root, env, method)
    assert summarize_repro(back)["ran"] == ["validate"]
    assert "Stage 'prune' is cached - skipping run, checking out outputs" in back
    assert {p.name: p.read_bytes() for p in (root / "models/pruned").iterdir()} == pruned
    assert (root / "reports/prune.json").read_bytes() == report
    assert f'"method": "{method}"' in (root / "reports/prune.json").read_text()
