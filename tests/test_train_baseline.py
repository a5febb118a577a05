"""The train_baseline stage: the configured steps on the tiny model, saved as a QA model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import stages.hardware
from engine.models import load_qa_model
from stages.common import StageError
from stages.train_baseline import train_baseline
from stages.training import training_arguments

FIXTURES = Path(__file__).parent / "fixtures"


# The tiny run's fp32 losses, as made on an AMD EPYC (avx2, no avx512): another x86-64 CPU sums its
# matmuls in another order, within LOSS_TOLERANCE of these.
COMMITTED_LOSSES = FIXTURES / "tiny_fp32_losses.json"
LOSS_TOLERANCE = 1e-4


def test_train_baseline_trains_the_configured_steps_to_the_committed_losses(params, tiny_model, features, tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)  # its checkpoints go under the working directory
    out = tmp_path / "baseline"
    out.mkdir()
    metrics = train_baseline(params, features, out)
    assert metrics["model"] == str(tiny_model) and metrics["steps"] == 3
    assert metrics["precision"] == "fp32" and metrics["objective"] == "cross-entropy of start and end"
    assert metrics["resumed_from_step"] is None
    committed = json.loads(COMMITTED_LOSSES.read_text())
    assert [row["step"] for row in metrics["loss_history"]] == [row["step"] for row in committed]
    assert [row["loss"] for row in metrics["loss_history"]] == pytest.approx([row["loss"] for row in committed],
                                                                              rel=LOSS_TOLERANCE)
    trained, start = load_qa_model(str(out)), load_qa_model(str(tiny_model))
    assert trained.state_dict().keys() == start.state_dict().keys()
    assert not torch.equal(trained.qa_outputs.weight, start.qa_outputs.weight)  # it trained


def test_precision_is_the_param_never_the_cpus_choice(params, monkeypatch, tmp_path):
    """fp32 and auto train in fp32 on a CPU whatever it can do; bf16 where it cannot fails in one line."""
    monkeypatch.setattr(stages.hardware, "CPUINFO", tmp_path / "cpuinfo")
    for flags in ("avx2 avx512_bf16 amx_bf16", "avx2"):
        (tmp_path / "cpuinfo").write_text(f"model name\t: Test CPU\nflags\t: {flags}\n")
        for precision in ("fp32", "auto"):
            args = training_arguments({**params["train"], "precision": precision}, params["seed"], str(tmp_path), 8)
            assert not args.bf16 and not args.fp16
    with pytest.raises(StageError, match=r"^train.precision = bf16: this CPU \(Test CPU\) has no bf16 instructions"):
        training_arguments({**params["train"], "precision": "bf16"}, params["seed"], str(tmp_path), 8)
    (tmp_path / "cpuinfo").write_text("model name\t: Test CPU\nflags\t: avx2 amx_bf16\n")
    assert training_arguments({**params["train"], "precision": "bf16"}, params["seed"], str(tmp_path), 8).bf16


def test_compile_is_the_param(params, tmp_path):
    assert params["train.compile"] is False and params["finetune.compile"] is False  # the default
    assert not training_arguments(params["train"], params["seed"], str(tmp_path), 8).torch_compile
    assert training_arguments({**params["finetune"], "compile": True}, params["seed"], str(tmp_path), 8).torch_compile
