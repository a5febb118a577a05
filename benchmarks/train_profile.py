"""Where a training step's time goes: the pipeline's own training (stages/training.train_qa, the
Trainer, distillation from a teacher where the section says so) for a few steps on synthetic
features, timed, then profiled (a second run, its first 5 steps left out). Prints per step the wall
time (the median over the run's second half: past warm-up and any compile), the GPU's kernel time
and its share of the wall (a low share: the host is the bottleneck, and fewer launches, e.g.
torch.compile, would pay), and the kernels with the most time (their names tell the math: f32 ffma,
tf32, bf16). On a CPU only the wall time and the ops' CPU time.

    python benchmarks/train_profile.py --model DIR [--params gpu/params.yaml] [--section finetune]
        [--steps 40] [--profile-steps 10] [--length 384] [--precision bf16] [--compile] [--json OUT]

The features are random tokens in windows of --length (SQuAD's windows are cut at 384, and a batch
pads to its longest), with random answer positions: the time of a step does not depend on them.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.models import load_qa_model, load_tokenizer  # noqa: E402
from profiling import activities, own_time  # noqa: E402
from stages.params import load_params  # noqa: E402
from stages.training import train_qa  # noqa: E402

PROFILE_SKIPS = 5  # steps run before the profiled ones: loading, the first steps' compile and autotuning


def synthetic_features(count: int, length: int, vocab_size: int, seed: int = 0):
    """`count` training windows of `length` random tokens with random answer spans (an HF Dataset)."""
    import datasets

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab_size, (count, length), generator=generator)
    starts = torch.randint(1, length - 8, (count,), generator=generator)
    return datasets.Dataset.from_dict({
        "input_ids": ids.tolist(),
        "token_type_ids": [[0] * length] * count,
        "attention_mask": [[1] * length] * count,
        "start_positions": starts.tolist(),
        "end_positions": (starts + torch.randint(0, 8, (count,), generator=generator)).tolist(),
    })


def section_for(params, name: str, steps: int, precision: str | None, compile_model: bool | None = None) -> dict:
    """The params section, for `steps` steps, in `precision` and with `compile_model` where given."""
    section = {**params[name], "max_steps": steps}
    if precision:
        section["precision"] = precision
    if compile_model is not None:
        section["compile"] = compile_model
    return section


class StepTimer(TrainerCallback):
    """The wall time between consecutive step ends (data loading included), the GPU drained at each."""

    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())

    def steady_ms(self) -> float:
        """Median step time over the second half of the run: past the warm-up (and any compile)."""
        steps = [(b - a) * 1000 for a, b in zip(self.ends, self.ends[1:])]
        return statistics.median(steps[len(steps) // 2:])


class ProfilerStep(TrainerCallback):
    """Moves a scheduled profiler on at each step's end (the GPU drained first, so a step's kernels
    fall in its own window): the profile holds the steps past warm-up alone, not the model's loading
    or the first steps' compile and autotuning."""

    def __init__(self, profiler: torch.profiler.profile):
        self.profiler = profiler

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.profiler.step()


def run(model_dir: str, section: dict, steps: int, length: int, seed: int,
        callbacks: tuple[TrainerCallback, ...] = ()) -> tuple[dict, StepTimer]:
    """One training run of `steps` steps (fresh model and teacher): train_qa's figures and the step times."""
    model, tokenizer = load_qa_model(model_dir), load_tokenizer(model_dir)
    teacher = copy.deepcopy(model) if section.get("distill") else None
    features = synthetic_features(steps * section["batch_size"], length, model.config.vocab_size, seed)
    timer = StepTimer()
    return train_qa(model, tokenizer, features, section, seed, teacher=teacher, callbacks=[timer, *callbacks]), timer


def profile_run(model_dir: str, section: dict, steps: int, length: int, seed: int, on_gpu: bool,
                skipped: int = PROFILE_SKIPS) -> torch.profiler.profile:
    """A run of `skipped` + `steps` steps whose profile holds the last `steps` alone."""
    schedule = torch.profiler.schedule(wait=skipped - 1, warmup=1, active=steps, repeat=1)
    with torch.profiler.profile(activities=activities(on_gpu), schedule=schedule) as profile:
        run(model_dir, {**section, "max_steps": skipped + steps}, skipped + steps, length, seed,
            callbacks=(ProfilerStep(profile),))
    return profile


def kernel_table(profile, steps: int, on_gpu: bool, top: int = 12) -> tuple[float, list[dict]]:
    """(the GPU's own time per step, its busiest entries per step): on a GPU the device's events, each
    counted once (profiling.own_time), on a CPU the ops by their self CPU time."""
    events, time_of = own_time(profile.key_averages(), on_gpu)
    device_us = sum(time_of(event) for event in events) if on_gpu else 0.0
    rows = sorted(events, key=time_of, reverse=True)[:top]
    return device_us / 1000 / steps, [
        {"op": event.key[:80], "device_ms_per_step": round(event.self_device_time_total / 1000 / steps, 3),
         "calls_per_step": round(event.count / steps, 1),
         "cpu_ms_per_step": round(event.self_cpu_time_total / 1000 / steps, 3)} for event in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a Hugging Face model directory")
    parser.add_argument("--params", default="gpu/params.yaml")
    parser.add_argument("--section", choices=("train", "finetune"), default="finetune")
    parser.add_argument("--steps", type=int, default=40, help="timed steps (the first few include warm-up)")
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--length", type=int, default=384)
    parser.add_argument("--precision", help="override the section's precision (fp32 on a CPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model and teacher, or not (default: the section's compile)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    params = load_params(args.params)
    cuda = torch.cuda.is_available()
    section = section_for(params, args.section, args.steps, args.precision, args.compile)
    timed, timer = run(args.model, section, args.steps, args.length, params["seed"])
    batch = section["batch_size"]
    wall_ms = timer.steady_ms()
    profile = profile_run(args.model, section, args.profile_steps, args.length, params["seed"], cuda)
    device_ms, ops = kernel_table(profile, args.profile_steps, cuda)
    report = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
        "section": args.section, "precision": timed["precision"], "compiled": section["compile"],
        "objective": timed["objective"],
        "batch_size": batch, "length": args.length, "steps_timed": args.steps,
        "wall_ms_per_step": round(wall_ms, 2), "run_samples_per_second": timed["samples_per_second"],
        "kernel_ms_per_step": round(device_ms, 2) if cuda else None,
        "kernel_share_of_wall": round(device_ms / wall_ms, 3) if cuda else None,
        "top_ops": ops,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
