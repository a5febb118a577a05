"""evaluate: official SQuAD v1.1 exact match and F1 for every model variant.

Post-processing follows Hugging Face's utils_qa.py (n-best start/end logits per window, spans
inside the context only, max answer length); the metric is the official v1.1 script's logic
(`evaluate.load("squad")` needs the hub for its script, so it is written out here and tested
against hand-computed values).
"""
from __future__ import annotations

import collections
import re
import string
from pathlib import Path

import torch
from tqdm.auto import tqdm

from engine.qa import best_span

from .common import StageError, best_device

VARIANTS = ("dense", "pruned", "sparse", "accelerated")


# --------------------------------------------------------------------------- official metric
def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, articles and extra white space (SQuAD v1.1)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1_score(prediction: str, truth: str) -> float:
    pred_tokens, truth_tokens = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(pred_tokens) & collections.Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def squad_v1_scores(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """Exact match and F1 in percent, each the best over an example's reference answers."""
    if not references:
        raise StageError("no references to score against")
    em = f1 = 0.0
    for qid, truths in references.items():
        prediction = predictions.get(qid, "")
        em += max(exact_match_score(prediction, t) for t in truths)
        f1 += max(f1_score(prediction, t) for t in truths)
    return {"exact_match": 100 * em / len(references), "f1": 100 * f1 / len(references)}


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
    model.eval()
    start, end = predict_logits(model, tokenizer, features, params["evaluate.batch_size"], device, f"evaluate {name}")
    predictions = postprocess(examples, features, start, end, params["evaluate.n_best"],
                              params["evaluate.max_answer_length"])
    references = {e["id"]: e["answers"]["text"] for e in examples}
    return {k: round(v, 3) for k, v in squad_v1_scores(predictions, references).items()}


def evaluate(params, features_dir: Path, model_dirs: dict[str, Path]) -> dict:
    """Scores per variant; `accelerated` is loaded with its plan applied."""
    import datasets

    from .modeling import load_qa_model, load_tokenizer

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
