"""Fine-tuning with the Hugging Face Trainer, shared by train_baseline and finetune_sparse."""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from accelerate.utils import convert_to_fp32
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from .common import StageError
from .hardware import precision_error
from .distributed import is_first_process, world_size


CHECKPOINTS = Path(".checkpoints")  # outside every DVC output: only an interrupted run leaves one
CHECKPOINTS_PER_RUN = 10


def training_arguments(section: dict, seed: int, output_dir: str, n_examples: int,
                       checkpoints: bool = False) -> TrainingArguments:
    """TrainingArguments from a train/finetune params section, in its `precision`: fp32, bf16 or
    fp16 autocast, or auto (bf16 on a GPU that has it, else fp16; fp32 on a CPU). A precision this
    machine cannot run fails in one line.

    With `checkpoints`, the full training state (model, optimizer, scheduler, RNG) is saved about
    CHECKPOINTS_PER_RUN times a run, the last one kept, so a killed run resumes where it was.

    Under torchrun each process takes batch_size / WORLD_SIZE of every batch: the effective batch,
    and so the step count and learning rate schedule, are those of one process."""
    cuda = torch.cuda.is_available()
    cuda_bf16 = cuda and torch.cuda.is_bf16_supported()
    precision = section["precision"]
    if error := precision_error(precision, f"{section_name(section)}.precision", cuda, cuda_bf16):
        raise StageError(error)
    bf16 = precision == "bf16" or (precision == "auto" and cuda_bf16)
    fp16 = precision == "fp16" or (precision == "auto" and cuda and not cuda_bf16)
    steps_per_epoch = max(1, -(-n_examples // section["batch_size"]))
    total_steps = section["max_steps"] or max(1, int(steps_per_epoch * section["epochs"]))
    logging_steps = max(1, total_steps // 50)
    # Checkpoints on logging steps: the log history a run resumes with holds every earlier step's loss.
    save_steps = max(1, total_steps // CHECKPOINTS_PER_RUN // logging_steps) * logging_steps
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=section["batch_size"] // world_size(),
        learning_rate=float(section["learning_rate"]),
        num_train_epochs=float(section["epochs"]),
        max_steps=section["max_steps"] or -1,
        lr_scheduler_type=section["lr_scheduler"],
        warmup_steps=float(section["warmup_ratio"]),  # a float in [0, 1) is a ratio of total steps
        weight_decay=float(section["weight_decay"]),
        seed=seed,
        data_seed=seed,
        logging_steps=logging_steps,
        logging_first_step=True,
        save_strategy="steps" if checkpoints else "no",
        save_steps=save_steps,
        save_total_limit=1,
        report_to="none",
        # A QA model uses every parameter in every step: DDP need not search the graph for unused ones.
        ddp_find_unused_parameters=False,
        use_cpu=not cuda,
        bf16=bf16,
        fp16=fp16,
        # On a GPU, batches are collated in worker processes so the GPU does not wait for them.
        dataloader_num_workers=2 if cuda else 0,
        dataloader_pin_memory=cuda,
        torch_compile=section["compile"],
    )


def section_name(section: dict) -> str:
    """"finetune" for the finetune section (it alone has `distill`), else "train": for error messages."""
    return "finetune" if "distill" in section else "train"


def objective(teacher: torch.nn.Module | None, section: dict) -> str:
    """What the logged loss is, in words (the loss chart names each run's)."""
    if teacher is None:
        return "cross-entropy of start and end"
    alpha, hidden = float(section["distill_alpha"]), section["distill_hidden"]
    if isinstance(hidden, list):
        hidden_term = f" + [{', '.join(f'{float(w):g}' for w in hidden)}] per-state hidden MSE" if any(hidden) else ""
    else:
        hidden_term = f" + {float(hidden):g} hidden MSE" if hidden else ""
    return (f"distillation, {alpha:g} T\u00b2 KL + {1 - alpha:g} cross-entropy" + hidden_term
            + f" (T = {float(section['distill_temperature']):g})")


def hidden_weights(section: dict, teacher: torch.nn.Module) -> float | list[float]:
    """finetune.distill_hidden: one weight for every hidden state, or a list of one per hidden state
    (the embeddings', then each layer's), whose length must fit the model's."""
    weights = section["distill_hidden"]
    if not isinstance(weights, list):
        return float(weights)
    states = teacher.config.num_hidden_layers + 1
    if len(weights) != states:
        raise StageError(f"finetune.distill_hidden has {len(weights)} weights; the model has {states} hidden states "
                         f"(its embeddings', then each of its {states - 1} layers'): give one number or {states}")
    return [float(w) for w in weights]


LABELS = ("start_positions", "end_positions")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) between their softmax(logits / T) over the positions, batch mean.

    Times T^2 (Hinton et al. 2015), so the gradients keep their scale when T changes.
    """
    return F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    ) * temperature**2


def hidden_state_loss(student_states, teacher_states, attention_mask: torch.Tensor,
                      weights: float | Sequence[float] = 1.0) -> torch.Tensor:
    """Mean over the hidden states (the embeddings', then each layer's) of weight times the MSE
    between student and teacher, over the real tokens only (padding is an artefact of batching).
    `weights`: one for all, or one per hidden state. Masked with
    torch.where, not a boolean index: an index's size is only known once the GPU has computed the mask,
    so it would stall every step until the GPU caught up."""
    real = attention_mask.bool().unsqueeze(-1)
    values = real.sum() * student_states[0].shape[-1]
    # The difference masked before it is squared, so that padding never reaches a gradient either.
    errors = torch.stack([torch.where(real, s.float() - t.float(), 0.0).pow(2).sum() / values
                          for s, t in zip(student_states, teacher_states, strict=True)])
    if isinstance(weights, (int, float)):  # scales the mean, not each error: a scalar weight's float
        return weights * errors.mean()      # arithmetic (and so its trained bits) never depends on lists
    return (errors * torch.tensor(weights, dtype=errors.dtype, device=errors.device)).mean()


class DistillationTrainer(Trainer):
    """The Trainer, with the QA loss mixed with distillation from a teacher's start/end logits:
    alpha * (KL_start + KL_end) / 2 + (1 - alpha) * QA loss (itself (CE_start + CE_end) / 2),
    plus, with hidden_weight > 0, hidden_weight * the hidden-state MSE of every layer
    (TinyBERT's intermediate-layer distillation: a target for every token, not only two logits);
    hidden_weight may instead be a list, one weight per hidden state."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(self, *args, teacher: torch.nn.Module, temperature: float, alpha: float,
                 hidden_weight: float | list[float] = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.to(self.args.device).eval()  # eval: no dropout in the targets
        if self.args.torch_compile:  # its forward is half a distilled step's launches
            self.teacher = torch.compile(self.teacher)
        self.temperature, self.alpha, self.hidden_weight = temperature, alpha, hidden_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        hidden = any(self.hidden_weight) if isinstance(self.hidden_weight, list) else self.hidden_weight > 0
        outputs = model(**inputs, output_hidden_states=hidden)
        # The teacher runs in the student's mixed precision (the Trainer autocasts only the model it
        # prepared: a teacher left out would run in fp32) and hands its outputs on in fp32, as the
        # student's come, so the losses are computed in fp32.
        with torch.no_grad(), self.accelerator.autocast():
            targets = self.teacher(**{k: v for k, v in inputs.items() if k not in LABELS}, output_hidden_states=hidden)
        targets = convert_to_fp32(targets)
        distill = (distillation_loss(outputs.start_logits, targets.start_logits, self.temperature)
                   + distillation_loss(outputs.end_logits, targets.end_logits, self.temperature)) / 2
        loss = self.alpha * distill + (1 - self.alpha) * outputs.loss
        if hidden:
            loss = loss + hidden_state_loss(outputs.hidden_states, targets.hidden_states, inputs["attention_mask"],
                                            self.hidden_weight)
        return (loss, outputs) if return_outputs else loss


class FailOnNonFinite(TrainerCallback):
    """Fail the stage once a logged loss or the weights are NaN or infinite (a learning rate far too
    high): the Trainer would train on, and DVC would cache the NaN model as a success. The weights
    are checked too because the Trainer leaves NaN step losses out of the logged average."""

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise StageError(f"the training loss is {loss} at step {state.global_step} (learning_rate too high?)")
        self.check_weights(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.check_weights(model, state.global_step)

    @staticmethod
    def check_weights(model, step: int) -> None:
        # A tensor is all finite when its min and max are (a NaN makes both NaN): one pass, without
        # a boolean mask the size of the model as isfinite(weight).all() makes.
        for name, weight in model.named_parameters():
            if not torch.isfinite(torch.stack(torch.aminmax(weight.detach()))).all():
                raise StageError(f"the weights ({name}) are not finite at step {step} (learning_rate too high?)")


class MaskRamp(TrainerCallback):
    """Gradual 2:4 (finetune.mask_ramp): before each step, the weights the masks remove are scaled by
    1 - step / ramp_steps (pruning.masks.fade_masks), reaching the masks themselves at ramp_steps and
    for good at the end of training. Set from the global step alone, so a resumed run fades alike."""

    def __init__(self, fade: Callable[[float], None], ramp: float):
        self.fade, self.ramp = fade, ramp

    def keep_removed(self, step: int, max_steps: int) -> float:
        ramp_steps = max(1, math.ceil(self.ramp * max_steps))
        return max(0.0, 1 - step / ramp_steps)

    def on_step_begin(self, args, state, control, **kwargs):
        self.fade(self.keep_removed(state.global_step, state.max_steps))

    def on_train_end(self, args, state, control, **kwargs):
        self.fade(0.0)


class NumericProgressCallback(ProgressCallback):
    """The Trainer's progress bar, with each log line as JSON numbers: the stock one writes floats as
    strings ({'loss': '4.996'}), which a reader of the log cannot parse or compare as numbers."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.write(json.dumps({k: v for k, v in (logs or {}).items() if k != "total_flos"}))


def checkpoint_dir(stage: str, params, train_features) -> Path:
    """Where `stage` keeps its checkpoints for one configuration (all params, the features and the
    number of processes, `auto` as resolved): a run with anything changed never resumes from them,
    and their stale ones are removed."""
    identity = json.dumps([params, train_features._fingerprint, world_size()], sort_keys=True, default=str)
    directory = CHECKPOINTS / f"{stage}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
    if is_first_process():
        for stale in CHECKPOINTS.glob(f"{stage}-*"):
            if stale != directory:
                shutil.rmtree(stale, ignore_errors=True)
    return directory


def last_complete_checkpoint(directory: Path | None) -> Path | None:
    """The newest checkpoint whose trainer state (written last by the first process) is whole and
    whose every process's RNG state (written by each, in no set order) is there. A run killed while
    the Trainer wrote its state leaves that file empty or cut short: resuming from it would fail."""
    if directory is None:
        return None
    processes = world_size()
    rng_states = ["rng_state.pth"] if processes == 1 else [f"rng_state_{rank}.pth" for rank in range(processes)]
    complete = [c for c in directory.glob("checkpoint-*")
                if whole_trainer_state(c / "trainer_state.json") and all((c / name).is_file() for name in rng_states)]
    return max(complete, key=checkpoint_step, default=None)


def whole_trainer_state(path: Path) -> bool:
    try:
        return "global_step" in json.loads(path.read_text())
    except (OSError, ValueError):  # missing, or cut short (json.JSONDecodeError is a ValueError)
        return False


def checkpoint_step(checkpoint: Path) -> int:
    """The step a Trainer checkpoint folder (checkpoint-<step>) was saved at."""
    return int(checkpoint.name.rsplit("-", 1)[1])


def train_qa(model, tokenizer, train_features, section: dict, seed: int, teacher: torch.nn.Module | None = None,
             checkpoints: Path | None = None, callbacks: Sequence[TrainerCallback] = ()) -> dict:
    """Train in place; return the loss history and throughput figures.

    With a teacher, the loss distils from it (section's distill_temperature and distill_alpha).
    With `checkpoints` (a directory), training resumes from its last complete checkpoint and
    saves new ones as it goes; the directory is removed once training has finished.
    Under torchrun every process calls it; samples_per_second counts them all.
    """
    if len(train_features) == 0:
        raise StageError("the train features are empty: nothing to train on")
    with tempfile.TemporaryDirectory(prefix="twofour-trainer-") as scratch:
        resume_from = last_complete_checkpoint(checkpoints)
        resumed_step = checkpoint_step(resume_from) if resume_from else None
        args = training_arguments(section, seed, str(checkpoints or scratch), len(train_features),
                                  checkpoints=checkpoints is not None)
        setup = {
            "model": model,
            "args": args,
            "train_dataset": train_features,
            "data_collator": DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8),
            "callbacks": [FailOnNonFinite(), *callbacks],
        }
        if teacher is None:
            trainer = Trainer(**setup)
        else:
            trainer = DistillationTrainer(**setup, teacher=teacher, temperature=float(section["distill_temperature"]),
                                          alpha=float(section["distill_alpha"]),
                                          hidden_weight=hidden_weights(section, teacher))
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(NumericProgressCallback)
        try:
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        except torch.OutOfMemoryError:
            raise StageError(
                f"out of memory at batch_size={section['batch_size']}: lower it in params.yaml"
            ) from None
    trainer.accelerator.wait_for_everyone()  # every process done with the checkpoints before they go
    if checkpoints is not None and is_first_process():
        shutil.rmtree(checkpoints, ignore_errors=True)
    history = [
        {"step": entry["step"], "loss": round(entry["loss"], 5), "learning_rate": entry.get("learning_rate")}
        for entry in trainer.state.log_history
        if "loss" in entry
    ]
    return {
        "loss_history": history,
        "final_loss": history[-1]["loss"] if history else None,
        "train_loss": round(mean_train_loss(result, trainer.state.log_history, resumed_step), 5),
        "steps": result.global_step,
        "processes": world_size(),
        "samples_per_second": samples_per_second(result.global_step - (resumed_step or 0), section["batch_size"],
                                                 result.metrics["train_runtime"]),
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "objective": objective(teacher, section),
        "resumed_from_step": resumed_step,
    }


def mean_train_loss(result, log_history: list[dict], resumed_step: int | None) -> float:
    """The mean loss over every step of the run. The Trainer's training_loss averages only the steps
    this process trained; a resumed run's earlier steps are in the log history it restored (each
    logged loss is the mean since the previous log, and checkpoints fall on logging steps)."""
    if not resumed_step:
        return result.training_loss
    before, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry and entry["step"] <= resumed_step:
            before += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return (before + result.training_loss * (result.global_step - resumed_step)) / result.global_step


def samples_per_second(steps_trained: int, batch_size: int, runtime_s: float) -> float:
    """Throughput of the steps this run trained (the Trainer's own figure counts a resumed run's
    steps from before the checkpoint as if trained in this run's time)."""
    return round(steps_trained * batch_size / max(runtime_s, 1e-9), 3)

