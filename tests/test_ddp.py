"""Several processes on the CPU: train_baseline under torchrun (gloo) trains as one process with the
same effective batch, writes one model from rank 0, and resumes after kill -9 of the stage's process.

The comparison runs on batches that split into identical halves: features of full length only (each
rank pads its own half, and the QA loss's softmax counts padded positions) and a whole number of
batches per epoch (at an epoch's ragged end, torchrun's ranks fill their halves from its start),
with dropout off (each rank draws its own masks). Those three are the only differences at scale.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import datasets
import pytest
import torch
import yaml

from conftest import tiny_params
from engine.models import load_qa_model
from stages import distributed
from stages.common import StageError, write_json
from stages.params import ParamError, validate
from stages.train_baseline import train_baseline
from test_resume import finish, start

STEPS, BATCH, BATCHES_PER_EPOCH = 20, 8, 12
LOSS_TOLERANCE = 1e-4  # logged losses (5 decimals): measured equal to the last decimal
WEIGHT_TOLERANCE = 1e-3  # Adam turns float-order differences in the gradient into ~1e-4 in the weights
MODEL_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
# CPU runs: with a GPU, `auto` is a GPU process each and two processes need two GPUs.
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the gloo runs of the CPU")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_model, features) -> Path:
    """A stage's working directory: the tiny model without dropout, 12 batches of full-length train
    features, params asking for 20 steps of batch 8 in two processes."""
    root = tmp_path_factory.mktemp("ddp")
    model = shutil.copytree(tiny_model, root / "model")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.0,
                                                   "attention_probs_dropout_prob": 0.0}))
    raw = tiny_params(model)
    full_length = datasets.load_from_disk(str(features / "train")).filter(
        lambda feature: len(feature["input_ids"]) == raw["tokenize"]["max_length"])
    full_length.select(range(BATCH * BATCHES_PER_EPOCH)).save_to_disk(str(root / "features" / "train"))
    raw["train"].update(max_steps=STEPS, batch_size=BATCH, num_processes=2)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return root


def processes_in(directory: Path) -> list[int]:
    """The processes whose working directory is `directory` (the stage's and its ranks)."""
    found = []
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        with contextlib.suppress(OSError):
            if Path(os.readlink(cwd)) == directory.resolve():
                found.append(int(cwd.parent.name))
    return found


def kill_after_complete_checkpoint(process, cwd: Path, min_step: int = 4) -> int:
    """SIGKILL the stage's process once a checkpoint past `min_step` holds both ranks' RNG states
    (complete, as the stage reads it); return its step."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        steps = [int(c.name.split("-")[-1]) for c in cwd.glob(".checkpoints/*/checkpoint-*")
                 if all((c / name).is_file() for name in ("trainer_state.json", "rng_state_0.pth", "rng_state_1.pth"))]
        if steps and max(steps) >= min_step:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
            return max(steps)
        assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read()[-3000:]}"
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def two_process_run(workdir):
    """The two-process run killed with -9 after a checkpoint, then run again to its end: the step it
    was killed at, the processes left 5 s after the kill, and the second run's metrics."""
    killed_at = kill_after_complete_checkpoint(start("train_baseline", workdir), workdir)
    deadline = time.monotonic() + 5
    while processes_in(workdir) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = processes_in(workdir)
    finish(start("train_baseline", workdir))
    return killed_at, left, json.loads((workdir / "result.json").read_text())


@pytest.fixture(scope="module")
def one_process_run(workdir, tmp_path_factory):
    """The same params with num_processes auto (1 without a GPU), in this process: its metrics, its
    model directory, and the torchrun launches it asked for."""
    root = shutil.copytree(workdir, tmp_path_factory.mktemp("one") / "run", ignore=shutil.ignore_patterns("out", "result.json", ".checkpoints"))
    raw = yaml.safe_load((workdir / "params.yaml").read_text())
    raw["train"]["num_processes"] = "auto"
    launches = []
    with pytest.MonkeyPatch.context() as patch, contextlib.chdir(root):
        patch.setattr("stages.train_baseline.run_in_processes", lambda *args: launches.append(args))
        metrics = train_baseline(validate(raw), Path("features"), Path("out"))
    return metrics, root / "out", launches


def test_one_process_trains_in_the_stage_process_as_before(one_process_run):
    metrics, out, launches = one_process_run
    assert launches == []
    assert metrics["processes"] == 1 and metrics["steps"] == STEPS and metrics["resumed_from_step"] is None
    assert {path.name for path in out.iterdir()} == MODEL_FILES


def test_two_processes_train_as_one_with_the_same_effective_batch(two_process_run, one_process_run, workdir):
    _, _, two = two_process_run
    one, one_out, _ = one_process_run
    assert (two["processes"], two["steps"], one["steps"]) == (2, STEPS, STEPS)
    assert [(e["step"], e["learning_rate"]) for e in two["loss_history"]] == \
           [(e["step"], e["learning_rate"]) for e in one["loss_history"]]  # the same schedule, step for step
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(two["loss_history"], one["loss_history"])) <= LOSS_TOLERANCE
    trained, reference = load_qa_model(str(workdir / "out")).state_dict(), load_qa_model(str(one_out)).state_dict()
    assert trained.keys() == reference.keys()
    assert max((trained[k] - reference[k]).abs().max().item() for k in trained) <= WEIGHT_TOLERANCE


def test_only_rank_0_writes_and_one_model_comes_out(two_process_run, workdir):
    assert {path.name for path in (workdir / "out").iterdir()} == MODEL_FILES
    assert {path.name for path in workdir.iterdir()} == {"model", "features", "params.yaml", "out", "result.json",
                                                         ".checkpoints"}
    assert not list((workdir / ".checkpoints").iterdir())  # removed once training finished


def test_a_two_process_run_killed_with_sigkill_resumes_from_its_checkpoint(two_process_run):
    killed_at, left_after_kill, resumed = two_process_run
    assert left_after_kill == []  # torchrun and both ranks died with the stage's process
    assert 4 <= killed_at <= resumed["resumed_from_step"] < STEPS and resumed["processes"] == 2


def test_a_batch_that_does_not_split_over_the_processes_fails_in_one_line(params):
    raw = json.loads(json.dumps(params))
    raw["train"].update(batch_size=8, num_processes=3)
    with pytest.raises(StageError, match=r"^train\.batch_size=8 does not split over 3 processes "
                                         r"\(train\.num_processes=3\): make it a multiple of 3$"):
        train_baseline(validate(raw), Path("features"), Path("out"))


@pytest.mark.parametrize("value, rule", [
    *[(bad, r"auto \(one per visible GPU, 1 on the CPU\) or a whole number >= 1") for bad in (0, -1, "two", True, 1.5)],
    (float("inf"), "a finite number"),
])
def test_num_processes_is_auto_or_a_whole_number(params, value, rule):
    raw = json.loads(json.dumps(params))
    raw["finetune"]["num_processes"] = value
    with pytest.raises(ParamError, match=rf"field 'finetune\.num_processes' = .* \(expected str or int, {rule}\)$"):
        validate(raw)


def test_a_rank_stage_error_is_the_stage_error_and_other_failures_name_their_rank(tmp_path):
    write_json(tmp_path / "error-rank0.json", {"rank": 0, "stage_error": False, "message": "DistBackendError: peer"})
    write_json(tmp_path / "error-rank1.json", {"rank": 1, "stage_error": True, "message": "the training loss is nan"})
    with pytest.raises(StageError, match="^the training loss is nan$"):
        distributed.raise_rank_error(tmp_path, 1)
    (tmp_path / "error-rank1.json").unlink()
    with pytest.raises(RuntimeError, match="^rank 0: DistBackendError: peer$"):
        distributed.raise_rank_error(tmp_path, 1)
    (tmp_path / "error-rank0.json").unlink()
    with pytest.raises(RuntimeError, match=r"^torchrun exited with status -9 \(each rank's log above\)$"):
        distributed.raise_rank_error(tmp_path, -9)
