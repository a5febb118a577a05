"""evaluate: official SQuAD v1.1 exact match and F1 for every model variant.

Post-processing follows Hugging Face's utils_qa.py (n-best start/end logits per window, spans
inside the context only, max answer length); the metric is metrics_lib/squad_v1, the official v1.1
script's logic as an `evaluate` module loaded from its local path (nothing fetched; with hub access
`evaluate.load("squad")` gives the same numbers).
"""
from __future__ import annotations

import collections
import importlib.util
from pathlib import Path
from time import perf_counter

import torch
from tqdm.auto import tqdm

from engine.common import best_device
from engine.qa import best_span

from .common import StageError

REPO = Path(__file__).resolve().parent.parent

VARIANTS = ("dense", "pruned", "sparse", "accelerated")


# --------------------------------------------------------------------------- official metric
SQUAD_METRIC = "metrics_lib/squad_v1"  # an `evaluate` metric module (a dvc.yaml dependency of the stage)


def squad_scores(predictions: dict[str, str], examples) -> dict[str, float]:
    """Exact match and F1 in percent through the repository's SQuAD v1.1 `evaluate` metric; where
    `evaluate` is not installed (a bare GPU machine), through the same module imported directly."""
    if not len(examples):
        raise StageError("no references to score against")
    references = [{"id": e["id"], "answers": e["answers"]} for e in examples]
    # one prediction per reference, in its order (`evaluate` pairs them): an unanswered one scores 0
    predictions = [{"id": r["id"], "prediction_text": predictions.get(r["id"], "")} for r in references]
    try:
        import evaluate
    except ImportError:
        return plain_squad_module().squad_v1_scores(predictions, references)
    metric = evaluate.load(str(REPO / SQUAD_METRIC), keep_in_memory=True)
    return metric.compute(predictions=predictions, references=references)


def plain_squad_module():
    """metrics_lib/squad_v1/squad_v1.py as a plain Python module (it needs `evaluate` only for its class)."""
    path = REPO / SQUAD_METRIC / "squad_v1.py"
    spec = importlib.util.spec_from_file_location("squad_v1", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- post-processing
def postprocess(examples, features, start_logits, end_logits, n_best: int, max_answer_length: int) -> dict[str, str]:
    """Map window-level logits back to one answer text per example."""
    windows = collections.defaultdict(list)
    for index, example_id in enumerate(features["example_id"]):
        windows[example_id].append(index)
    offsets_all = features["offset_mapping"]
    predictions = {}
    for example in examples:
        spans = [
            best_span(start_logits[i], end_logits[i], offsets_all[i], n_best, max_answer_length)
            for i in windows[example["id"]]
        ]
        spans = [s for s in spans if s is not None]
        if spans:
            _, start, end = max(spans)
            predictions[example["id"]] = example["context"][start:end]
        else:
            predictions[example["id"]] = ""
    return predictions


# --------------------------------------------------------------------------- inference
@torch.inference_mode()
def predict_logits(model, tokenizer, features, batch_size: int, device: torch.device, desc: str):
    """Start/end logits for every window, batch by batch with dynamic padding."""
    columns = [c for c in ("input_ids", "token_type_ids", "attention_mask") if c in features.column_names]
    inputs = features.select_columns(columns)
    starts, ends = [], []
    for begin in tqdm(range(0, len(inputs), batch_size), desc=desc, unit="batch"):
        batch = tokenizer.pad(inputs[begin:begin + batch_size], return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        starts.extend(out.start_logits.float().cpu().numpy())
        ends.extend(out.end_logits.float().cpu().numpy())
    return starts, ends


def evaluate_variant(model, tokenizer, examples, features, params, device, name: str) -> dict:
    """Exact match and F1, and windows_per_s: windows through the model per second of the whole
    prediction pass (padding, host copies and, for the accelerated model, each shape's compile and
    graph capture on first use included), a throughput a user's batch job would see."""
    model.eval()
    started = perf_counter()
    start, end = predict_logits(model, tokenizer, features, params["evaluate.batch_size"], device, f"evaluate {name}")
    seconds = perf_counter() - started  # the logits are on the host: the device is done
    predictions = postprocess(examples, features, start, end, params["evaluate.n_best"],
                              params["evaluate.max_answer_length"])
    scores = {k: round(v, 3) for k, v in squad_scores(predictions, examples).items()}
    return {**scores, "windows_per_s": round(len(features) / seconds, 1)}


def evaluate(params, features_dir: Path, model_dirs: dict[str, Path]) -> dict:
    """Scores per variant; `accelerated` is loaded with its plan applied."""
    import datasets

    from engine.models import load_qa_model, load_tokenizer

    device = best_device()
    # On a GPU every variant runs in the accelerated model's dtype, so the comparison is fair.
    dtype = getattr(torch, params["accelerate.dtype"]) if device.type == "cuda" else torch.float32
    examples = datasets.load_from_disk(str(features_dir / "validation_examples"))
    features = datasets.load_from_disk(str(features_dir / "validation"))
    scores = {}
    for name, model_dir in model_dirs.items():
        if name == "accelerated":
            from engine.plan import load_accelerated  # the GPU engine only where it is needed

            model = load_accelerated(model_dir, device, dtype)
        else:
            model = load_qa_model(str(model_dir), dtype=dtype).to(device)
        tokenizer = load_tokenizer(str(model_dir))
        scores[name] = evaluate_variant(model, tokenizer, examples, features, params, device, name)
        del model
    return scores
