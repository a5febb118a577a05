"""SQuAD v1.1 exact match and F1, as a Hugging Face `evaluate` metric kept in the repository.

    metric = evaluate.load("metrics_lib/squad_v1")   # a local path: nothing is fetched
    metric.compute(predictions=[{"id": "q1", "prediction_text": "1815"}],
                   references=[{"id": "q1", "answers": {"text": ["1815"], "answer_start": [16]}}])
    # {'exact_match': 100.0, 'f1': 100.0}

The official v1.1 script's logic: answers are normalized (lower case, no punctuation, no articles
a/an/the, single spaces); per question the best score over its reference answers; both in percent.
Inputs and outputs are those of the hub's metric, so with hub access `evaluate.load("squad")` gives
the same numbers. Without `evaluate` installed (a bare GPU machine) the module still imports as
plain Python and `squad_v1_scores` scores the same inputs.
"""
from __future__ import annotations

import collections
import re
import string

PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, articles and extra white space (SQuAD v1.1)."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1_score(prediction: str, truth: str) -> float:
    pred_tokens, truth_tokens = normalize_answer(prediction).split(), normalize_answer(truth).split()
    same = sum((collections.Counter(pred_tokens) & collections.Counter(truth_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def squad_v1_scores(predictions: list[dict], references: list[dict]) -> dict[str, float]:
    """Exact match and F1 in percent over `references`; a question without a prediction scores 0."""
    if not references:
        raise ValueError("no references to score against")
    predicted = {p["id"]: p["prediction_text"] for p in predictions}
    em = f1 = 0.0
    for reference in references:
        prediction, truths = predicted.get(reference["id"], ""), reference["answers"]["text"]
        em += max(exact_match_score(prediction, t) for t in truths)
        f1 += max(f1_score(prediction, t) for t in truths)
    return {"exact_match": 100 * em / len(references), "f1": 100 * f1 / len(references)}


try:
    import datasets
    import evaluate
except ImportError:  # plain Python use: the functions above are all there is
    evaluate = None

if evaluate is not None:

    class SquadV1(evaluate.Metric):
        """`evaluate` wrapper around `squad_v1_scores`, with the hub's "squad" input features."""

        def _info(self):
            return evaluate.MetricInfo(
                description="SQuAD v1.1 exact match and F1 (official normalization), in percent.",
                citation="Rajpurkar et al., SQuAD: 100,000+ Questions for Machine Comprehension of Text, 2016.",
                inputs_description="predictions: {id, prediction_text}; references: {id, answers: {text, answer_start}}",
                features=datasets.Features({
                    "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")},
                    "references": {
                        "id": datasets.Value("string"),
                        "answers": datasets.Sequence({"text": datasets.Value("string"),
                                                      "answer_start": datasets.Value("int32")}),
                    },
                }),
                reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
            )

        def _compute(self, predictions, references):
            return squad_v1_scores(predictions, references)
