"""Fault injection: a training stage killed mid-run resumes from its checkpoint and ends exactly
where an uninterrupted run ends; the same seed gives bit-identical results."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, tiny_params

# Runs one training stage in its own process, as `dvc repro` would (minus Prefect: not under test).
DRIVER = """
import json, sys, yaml
from pathlib import Path
from stages.params import validate
from stages.{module} import {module}
params = validate(yaml.safe_load(Path("params.yaml").read_text()))
metrics = {module}(params, {args})
Path("result.json").write_text(json.dumps(metrics))
"""
STAGES = {
    "train_baseline": 'Path("features"), Path("out")',
    "finetune_sparse": 'Path("features"), Path("pruned"), Path("out")',
}


@pytest.fixture(scope="module")
def fresh_workdir(tmp_path_factory, tiny_model):
    """Make working directories, each with the same features, params and pruned model."""
    from engine.models import load_tokenizer
    from stages.params import validate
    from stages.prune import prune
    from stages.tokenize import tokenize

    raw = tiny_params(tiny_model)
    raw["train"].update(max_steps=40, batch_size=4)
    raw["finetune"].update(max_steps=40, batch_size=4, distill=False)  # no teacher in the work directory
    raw["prune"]["method"] = "magnitude"
    params = validate(raw)
    template = tmp_path_factory.mktemp("template")
    (template / "params.yaml").write_text(yaml.safe_dump(raw))
    for name in ("features", "pruned"):
        (template / name).mkdir()
    tokenize(params, load_tokenizer(str(tiny_model)), template / "features")
    prune(params, tiny_model, template / "pruned")

    def make(name: str) -> Path:
        workdir = tmp_path_factory.mktemp(name)
        subprocess.run(["cp", "-r", f"{template}/.", str(workdir)], check=True)
        return workdir

    return make


def start(stage: str, cwd: Path) -> subprocess.Popen:
    (cwd / "out").mkdir(exist_ok=True)
    code = DRIVER.format(module=stage, args=STAGES[stage])
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]


def kill_after_checkpoint(process: subprocess.Popen, cwd: Path, sig: int, min_step: int = 12) -> int:
    """Kill the run once a complete checkpoint past `min_step` exists; return that step."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        steps = [int(c.name.split("-")[-1]) for c in cwd.glob(".checkpoints/*/checkpoint-*")
                 if (c / "trainer_state.json").is_file()]
        if steps and max(steps) >= min_step:
            process.send_signal(sig)
            process.wait(timeout=60)
            return max(steps)
        if process.poll() is not None:
            raise AssertionError("the run ended before it could be killed")
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


def final_state(cwd: Path):
    from engine.models import load_qa_model

    metrics = json.loads((cwd / "result.json").read_text())
    weights = load_qa_model(str(cwd / "out")).state_dict()
    return metrics, weights


@pytest.mark.parametrize("stage, sig", [("train_baseline", signal.SIGKILL), ("finetune_sparse", signal.SIGTERM)])
def test_killed_training_resumes_to_the_same_result(fresh_workdir, stage, sig):
    straight_dir, killed_dir = fresh_workdir("straight"), fresh_workdir("killed")
    finish(start(stage, straight_dir))
    killed_at = kill_after_checkpoint(start(stage, killed_dir), killed_dir, sig)
    assert 0 < killed_at < 40 and not (killed_dir / "result.json").exists()
    finish(start(stage, killed_dir))  # the next run picks up the checkpoint

    straight, straight_weights = final_state(straight_dir)
    resumed, resumed_weights = final_state(killed_dir)
    assert resumed["resumed_from_step"] >= killed_at - 4 and straight["resumed_from_step"] is None
    assert resumed["loss_history"] == straight["loss_history"] and resumed["steps"] == straight["steps"] == 40
    assert resumed["train_loss"] == straight["train_loss"]  # the whole run's mean, not the resumed steps'
    assert straight_weights.keys() == resumed_weights.keys()
    assert all(torch.equal(straight_weights[k], resumed_weights[k]) for k in straight_weights)
    assert not list(killed_dir.glob(".checkpoints/*"))  # removed once training finished


def test_throughput_counts_only_the_steps_this_run_trained():
    from stages.training import samples_per_second

    # resumed at step 1725 of 3458, batch 64, 238 s: 466 samples/s (the Trainer said 930)
    assert samples_per_second(3458 - 1725, 64, 238.0) == pytest.approx(466.0, abs=0.1)


def test_same_seed_gives_bit_identical_results(fresh_workdir):
    """Two fresh runs of the same stage with the same params: identical loss and weights."""
    runs = [fresh_workdir(f"run{i}") for i in range(2)]
    for workdir in runs:
        finish(start("finetune_sparse", workdir))
    (first, first_weights), (second, second_weights) = (final_state(w) for w in runs)
    assert first["loss_history"] == second["loss_history"] and first["train_loss"] == second["train_loss"]
    assert all(torch.equal(first_weights[k], second_weights[k]) for k in first_weights)


def test_a_checkpoint_whose_trainer_state_was_cut_short_is_not_resumed_from(tmp_path):
    """A run killed while the Trainer wrote trainer_state.json (last of a checkpoint) leaves it empty or
    partial: the last complete checkpoint is the one before."""
    from stages.training import last_complete_checkpoint

    for step, state in ((10, json.dumps({"global_step": 10})), (15, json.dumps({"global_step": 15})[:9]),
                        (20, ""), (25, json.dumps({"global_step": 25}))):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "trainer_state.json").write_text(state)
        if step != 25:  # 25: its RNG state not written yet
            (checkpoint / "rng_state.pth").write_bytes(b"rng")
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
