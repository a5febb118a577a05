"""train_baseline: fine-tune the dense model for extractive QA (the reference every variant is held to)."""
from __future__ import annotations

from pathlib import Path

import datasets

from engine.models import load_qa_model, load_tokenizer

from .common import seed_everything
from .distributed import is_first_process, processes_to_launch, run_in_processes
from .model_source import resolve_model_source
from .modeling import save_model
from .training import checkpoint_dir, train_qa


def train_baseline(params, features_dir: Path, out_dir: Path) -> dict:
    if (processes := processes_to_launch(params, "train")) > 1:
        return run_in_processes(train_baseline, processes, params, features_dir, out_dir)
    seed_everything(params["seed"])
    source = resolve_model_source(params["model.name"])
    tokenizer = load_tokenizer(source)
    model = load_qa_model(source)
    train_features = datasets.load_from_disk(str(features_dir / "train"))
    stats = train_qa(model, tokenizer, train_features, params["train"], params["seed"],
                     checkpoints=checkpoint_dir("train_baseline", params, train_features))
    if is_first_process():
        save_model(model, tokenizer, out_dir)
    return {"model": params["model.name"], **stats}
