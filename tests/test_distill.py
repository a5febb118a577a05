"""Distillation from the dense baseline during sparse fine-tuning, and repeatable fine-tuning."""
from __future__ import annotations

import math

import datasets
import pytest
import torch
from transformers import TrainingArguments

from conftest import saved_masks
from engine.models import load_qa_model, load_tokenizer
from pruning.masks import calibration_batches
from stages.finetune_sparse import finetune_sparse
from stages.prune import prune
from stages.tokenize import tokenize
from stages.common import StageError
from stages.training import DistillationTrainer, distillation_loss, hidden_state_loss, hidden_weights, objective


def softmax(logits: list[float], temperature: float) -> list[float]:
    exps = [math.exp(x / temperature) for x in logits]
    return [e / sum(exps) for e in exps]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_distillation_loss_is_kl_at_temperature_times_t_squared():
    student = [[1.0, 2.0, 3.0], [0.0, 0.5, -1.0]]
    teacher = [[3.0, 2.0, 1.0], [0.0, 0.0, 2.0]]
    temperature = 2.0
    by_hand = sum(kl(softmax(t, temperature), softmax(s, temperature)) for s, t in zip(student, teacher)) / 2
    loss = distillation_loss(torch.tensor(student), torch.tensor(teacher), temperature)
    assert loss.item() == pytest.approx(by_hand * temperature**2, rel=1e-6)
    assert distillation_loss(torch.tensor(teacher), torch.tensor(teacher), temperature).item() == pytest.approx(0, abs=1e-7)


def test_trainer_loss_mixes_distillation_and_qa_loss(tiny_model, tmp_path):
    student, teacher = load_qa_model(str(tiny_model)), load_qa_model(str(tiny_model))
    torch.nn.init.normal_(teacher.qa_outputs.weight)  # a teacher that disagrees with the student
    student.eval()  # no dropout, so the two forward passes below see the same model
    batch = {"input_ids": torch.tensor([[101, 2054, 2003, 102, 1996, 3007, 102]]),
             "attention_mask": torch.ones(1, 7, dtype=torch.long),
             "start_positions": torch.tensor([4]), "end_positions": torch.tensor([5])}
    trainer = DistillationTrainer(model=student, args=TrainingArguments(str(tmp_path), use_cpu=True, report_to="none"),
                                  teacher=teacher, temperature=3.0, alpha=0.25)
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(student, batch, return_outputs=True)
        targets = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    distill = (distillation_loss(outputs.start_logits, targets.start_logits, 3.0)
               + distillation_loss(outputs.end_logits, targets.end_logits, 3.0)) / 2
    assert distill.item() > 0
    assert loss.item() == pytest.approx(0.25 * distill.item() + 0.75 * outputs.loss.item(), rel=1e-6)



@pytest.mark.parametrize("compile_model", [False, True])
def test_the_teacher_is_compiled_with_the_student(tiny_model, tmp_path, compile_model):
    """train.compile / finetune.compile: the Trainer compiles the student; the teacher's forward,
    half of a distilled step's launches, is compiled alike (lazily: nothing compiles before a step)."""
    teacher = load_qa_model(str(tiny_model))
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to="none", torch_compile=compile_model)
    trainer = DistillationTrainer(model=load_qa_model(str(tiny_model)), args=args, teacher=teacher,
                                  temperature=2.0, alpha=0.5)
    if compile_model:
        assert isinstance(trainer.teacher, torch._dynamo.eval_frame.OptimizedModule)
        assert trainer.teacher._orig_mod is teacher and not trainer.teacher.training
    else:
        assert trainer.teacher is teacher

@pytest.mark.parametrize("bf16", [False, True])
def test_the_teacher_runs_in_the_students_precision_and_hands_on_fp32(tiny_model, tmp_path, bf16):
    """Under bf16 the teacher's matmuls run in bf16 as the student's do (not in fp32, which on a GPU
    costs a distilled step a third of its time), and the losses still get fp32 targets."""
    teacher = load_qa_model(str(tiny_model))
    seen = []
    teacher.qa_outputs.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    targets = []
    real_loss = distillation_loss

    def recording_loss(student_logits, teacher_logits, temperature):
        targets.append(teacher_logits.dtype)
        return real_loss(student_logits, teacher_logits, temperature)

    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to="none", bf16=bf16)
    trainer = DistillationTrainer(model=load_qa_model(str(tiny_model)), args=args, teacher=teacher,
                                  temperature=2.0, alpha=0.5, hidden_weight=1.0)
    batch = {"input_ids": torch.tensor([[101, 2054, 2003, 102, 1996, 3007, 102]]),
             "attention_mask": torch.ones(1, 7, dtype=torch.long),
             "start_positions": torch.tensor([4]), "end_positions": torch.tensor([5])}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("stages.training.distillation_loss", recording_loss)
        loss = trainer.compute_loss(trainer.model, batch)
    assert seen == [torch.bfloat16 if bf16 else torch.float32]
    assert targets == [torch.float32, torch.float32] and torch.isfinite(loss)


@pytest.fixture
def pruned(params, tiny_model, tmp_path):
    """Features and a magnitude-pruned tiny model."""
    features, pruned = tmp_path / "features", tmp_path / "pruned"
    features.mkdir()
    tokenize(params, load_tokenizer(str(tiny_model)), features)
    prune(params, tiny_model, pruned, features)
    return features, pruned


def test_distilled_finetune_holds_2_4_and_repeats_exactly(params, tiny_model, pruned, tmp_path):
    features, pruned_dir = pruned
    # Large steps would refill zeros if the masks slipped; the hidden-state loss is in the repeat too.
    params["finetune"].update(distill=True, distill_hidden=1.0, learning_rate=0.01)
    weights = []
    for run in ("first", "second"):
        metrics = finetune_sparse(params, features, pruned_dir, tmp_path / run, baseline_dir=tiny_model)
        assert metrics["pattern_2of4_holds"] and metrics["steps"] == 2
        weights.append(load_qa_model(str(tmp_path / run)).state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    masks = saved_masks(pruned_dir)
    for name, mask in masks.items():
        assert torch.all(weights[0][f"{name}.weight"][~mask] == 0)
    before = load_qa_model(str(pruned_dir)).state_dict()
    assert any(not torch.equal(before[k], weights[0][k]) for k in before)  # it did train


@torch.no_grad()
def divergence_from(teacher, model_dir, batch) -> float:
    student = load_qa_model(str(model_dir))
    ours, theirs = student(**batch), teacher(**batch)
    return (distillation_loss(ours.start_logits, theirs.start_logits, 1.0)
            + distillation_loss(ours.end_logits, theirs.end_logits, 1.0)).item()


def test_pure_distillation_moves_the_sparse_model_towards_the_teacher(params, tiny_model, pruned, tmp_path):
    features, pruned_dir = pruned
    # The random tiny model's logits are nearly flat; a teacher with a sharp head has something to teach.
    teacher = load_qa_model(str(tiny_model))
    torch.manual_seed(0)
    torch.nn.init.normal_(teacher.qa_outputs.weight)
    teacher.save_pretrained(tmp_path / "teacher")
    params["finetune"].update(distill=True, distill_alpha=1.0, learning_rate=0.01, max_steps=4)
    finetune_sparse(params, features, pruned_dir, tmp_path / "distilled", baseline_dir=tmp_path / "teacher")
    batch = calibration_batches(datasets.load_from_disk(str(features / "train")), load_tokenizer(str(tiny_model)),
                                n_batches=1, batch_size=16, seed=0)[0]
    # Deterministic on CPU, so a fixed bar: 4 steps of pure distillation cut the divergence by a third.
    assert divergence_from(teacher, tmp_path / "distilled", batch) < 2 / 3 * divergence_from(teacher, pruned_dir, batch)


def test_hidden_state_loss_is_the_layer_mean_of_mse_over_real_tokens():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    student = [torch.randn(2, 4, 3) for _ in range(3)]
    teacher = [torch.randn(2, 4, 3) for _ in range(3)]
    by_hand = sum(((s - t)[mask.bool()] ** 2).mean() for s, t in zip(student, teacher)) / 3
    assert hidden_state_loss(student, teacher, mask).item() == pytest.approx(by_hand.item(), rel=1e-6)
    padded = [t.clone() for t in teacher]
    for t in padded:
        t[~mask.bool()] = 1e6  # padding positions do not count
    assert hidden_state_loss(student, padded, mask).item() == pytest.approx(by_hand.item(), rel=1e-6)
    for t in padded:
        t[~mask.bool()] = float("nan")  # nor does whatever a padded position holds, in the loss or its gradient
    student = [s.requires_grad_() for s in student]
    loss = hidden_state_loss(student, padded, mask)
    loss.backward()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert all(torch.isfinite(s.grad).all() and (s.grad[~mask.bool()] == 0).all() for s in student)
    assert hidden_state_loss(teacher, teacher, mask).item() == 0


def test_per_state_weights_weigh_each_hidden_states_mse():
    torch.manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 0]])
    student = [torch.randn(1, 4, 3) for _ in range(3)]
    teacher = [torch.randn(1, 4, 3) for _ in range(3)]
    errors = [((s - t)[mask.bool()] ** 2).mean().item() for s, t in zip(student, teacher)]
    weights = [0.0, 2.0, 7.0]
    by_hand = sum(w * e for w, e in zip(weights, errors)) / 3
    assert hidden_state_loss(student, teacher, mask, weights).item() == pytest.approx(by_hand, rel=1e-6)
    assert hidden_state_loss(student, teacher, mask, [4.0] * 3).item() == pytest.approx(
        hidden_state_loss(student, teacher, mask, 4.0).item(), rel=1e-6)
    with pytest.raises(ValueError):  # a weight list the wrong length never silently truncates
        hidden_state_loss(student, teacher[:2], mask, weights)


def test_per_state_weights_must_fit_the_models_hidden_states(tiny_model):
    teacher = load_qa_model(str(tiny_model))
    states = teacher.config.num_hidden_layers + 1
    assert hidden_weights({"distill_hidden": 3}, teacher) == 3.0
    assert hidden_weights({"distill_hidden": list(range(states))}, teacher) == [float(i) for i in range(states)]
    with pytest.raises(StageError, match=f"finetune.distill_hidden has {states + 1} weights; the model has {states} "
                                         "hidden states"):
        hidden_weights({"distill_hidden": [1.0] * (states + 1)}, teacher)
    section = {"distill_alpha": 0.9, "distill_temperature": 2.0, "distill_hidden": [0, 1.5, 3]}
    assert objective(teacher, section) == "distillation, 0.9 T\u00b2 KL + 0.1 cross-entropy + [0, 1.5, 3] per-state hidden MSE (T = 2)"
    assert objective(teacher, {**section, "distill_hidden": 10.0}).endswith("+ 10 hidden MSE (T = 2)")
    assert "hidden" not in objective(teacher, {**section, "distill_hidden": [0, 0, 0]})


def test_trainer_adds_the_weighted_hidden_state_loss(tiny_model, tmp_path):
    student, teacher = load_qa_model(str(tiny_model)), load_qa_model(str(tiny_model))
    torch.nn.init.normal_(teacher.bert.encoder.layer[0].output.dense.weight)  # hidden states that differ
    student.eval()
    batch = {"input_ids": torch.tensor([[101, 2054, 2003, 102, 1996, 3007, 102, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]]),
             "start_positions": torch.tensor([4]), "end_positions": torch.tensor([5])}
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to="none")
    losses = {}
    for weight in (0.0, 5.0):
        trainer = DistillationTrainer(model=student, args=args, teacher=teacher, temperature=2.0, alpha=0.5,
                                      hidden_weight=weight)
        with torch.no_grad():
            losses[weight] = trainer.compute_loss(student, batch).item()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        hidden = hidden_state_loss(student(**inputs, output_hidden_states=True).hidden_states,
                                   teacher(**inputs, output_hidden_states=True).hidden_states, batch["attention_mask"])
    assert hidden.item() > 0
    assert losses[5.0] == pytest.approx(losses[0.0] + 5.0 * hidden.item(), rel=1e-5)
    # One weight per hidden state: only the states given weight count, each by its own.
    states = len(student(**inputs, output_hidden_states=True).hidden_states)
    per_state = [0.0] * (states - 1) + [4.0]
    trainer = DistillationTrainer(model=student, args=args, teacher=teacher, temperature=2.0, alpha=0.5,
                                  hidden_weight=per_state)
    with torch.no_grad():
        weighted = trainer.compute_loss(student, batch).item()
        last = hidden_state_loss(student(**inputs, output_hidden_states=True).hidden_states[-1:],
                                 teacher(**inputs, output_hidden_states=True).hidden_states[-1:], batch["attention_mask"])
    assert weighted == pytest.approx(losses[0.0] + 4.0 * last.item() / states, rel=1e-5)
