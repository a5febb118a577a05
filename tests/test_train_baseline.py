"""The train_baseline stage: the configured steps on the tiny model, saved as a QA model."""
from __future__ import annotations

import torch

import stages.training
from stages.modeling import load_qa_model
from stages.train_baseline import train_baseline
from stages.training import cpu_multiplies_bf16, training_arguments


def test_train_baseline_trains_the_configured_steps_and_saves_a_qa_model(params, tiny_model, features, tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)  # its checkpoints go under the working directory
    out = tmp_path / "baseline"
    out.mkdir()
    metrics = train_baseline(params, features, out)
    assert metrics["model"] == str(tiny_model) and metrics["steps"] == 3
    assert metrics["precision"] == ("bf16" if cpu_multiplies_bf16() else "fp32")
    assert len(metrics["loss_history"]) <= 3 and metrics["resumed_from_step"] is None
    trained, start = load_qa_model(str(out)), load_qa_model(str(tiny_model))
    assert trained.state_dict().keys() == start.state_dict().keys()
    assert not torch.equal(trained.qa_outputs.weight, start.qa_outputs.weight)  # it trained


def test_cpu_training_is_bf16_only_where_the_cpu_multiplies_bf16(params, monkeypatch, tmp_path):
    for native, bf16 in ((True, True), (False, False)):
        monkeypatch.setattr(stages.training, "cpu_multiplies_bf16", lambda native=native: native)
        args = training_arguments(params["train"], params["seed"], str(tmp_path), n_examples=8)
        assert args.bf16 is bf16 and not args.fp16
