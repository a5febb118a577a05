"""SQuAD v1.1 metric (metrics_lib/squad_v1 through `evaluate`, and as plain Python) and post-processing,
against values computed by hand and the scores of the hand-written metric it replaced."""
from __future__ import annotations

import builtins
import json

import pytest

from conftest import REPO
from stages.evaluate import SQUAD_METRIC, best_span, plain_squad_module, postprocess, squad_scores

squad = plain_squad_module()
normalize_answer, f1_score, exact_match_score = squad.normalize_answer, squad.f1_score, squad.exact_match_score


def squad_v1_scores(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """The stage's scoring, from {id: text} and {id: [reference texts]}."""
    examples = [{"id": qid, "answers": {"text": texts, "answer_start": [0] * len(texts)}}
                for qid, texts in references.items()]
    return squad_scores(predictions, examples)


def test_normalize_answer():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_f1_and_exact_match_by_hand():
    # prediction {cat, sat}, truth {cat, sat, down}: precision 1, recall 2/3, F1 0.8
    assert f1_score("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert f1_score("dog", "cat") == 0.0
    assert f1_score("", "cat") == 0.0
    assert exact_match_score("Paris.", "paris") == 1.0
    assert exact_match_score("in Paris", "Paris") == 0.0


def test_scores_take_best_reference_and_average_in_percent():
    predictions = {"q1": "1815", "q2": "in London"}
    references = {"q1": ["1815"], "q2": ["London", "the city of London"]}
    # q2: vs "London" P=1/2 R=1 -> 2/3; vs "city of London" P=1/2 R=1/3 -> 0.4; best 2/3
    scores = squad_v1_scores(predictions, references)
    assert scores["exact_match"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx((100 + 200 / 3) / 2)


def test_missing_prediction_scores_zero():
    assert squad_v1_scores({}, {"q": ["x"]}) == {"exact_match": 0.0, "f1": 0.0}


def embedded_predictions(count: int = 300):
    """Predictions from the embedded data's answers, each a context window shifted and stretched
    by a few characters (partial overlaps of every kind), with the questions' reference texts."""
    raw = json.loads((REPO / "data" / "embedded" / "biographies.json").read_text())
    questions = [(qa["id"], paragraph["context"], qa["answers"]) for article in raw["data"]
                 for paragraph in article["paragraphs"] for qa in paragraph["qas"]][:count]
    predictions = {}
    for i, (qid, context, answers) in enumerate(questions):
        start, text = answers[0]["answer_start"], answers[0]["text"]
        predictions[qid] = context[max(0, start - i % 7): start + len(text) + (i % 5) * 3 - 2]
    return predictions, {qid: [a["text"] for a in answers] for qid, _, answers in questions}


# the hand-written metric's scores (commit 75c6e00, stages/evaluate.py) on embedded_predictions()
HAND_WRITTEN_SCORES = {"exact_match": 8.333333333333334, "f1": 53.58412698412704}


def test_evaluate_metric_gives_the_previous_scores_on_the_embedded_data():
    assert squad_v1_scores(*embedded_predictions()) == HAND_WRITTEN_SCORES


def test_without_evaluate_the_same_module_scores_as_plain_python(monkeypatch):
    real_import = builtins.__import__

    def no_evaluate(name, *args, **kwargs):
        if name == "evaluate":
            raise ImportError("no evaluate here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_evaluate)
    assert squad_v1_scores(*embedded_predictions()) == HAND_WRITTEN_SCORES


def test_metric_loads_from_its_local_path_offline(monkeypatch):
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = evaluate.load(str(REPO / SQUAD_METRIC), keep_in_memory=True)
    scores = metric.compute(predictions=[{"id": "q", "prediction_text": "The Paris!"}],
                            references=[{"id": "q", "answers": {"text": ["paris", "x"], "answer_start": [0, 9]}}])
    assert scores == {"exact_match": 100.0, "f1": 100.0}


OFFSETS = [None, None, None, (0, 3), (4, 7), (8, 12), (13, 17), None]  # [CLS] q q | c c c c | [SEP]


def test_best_span_skips_question_tokens_reversed_and_long_spans():
    start = [0, 9, 0, 1, 5, 0, 0, 0]   # best start logit sits on a question token
    end = [0, 0, 9, 0, 0, 4, 1, 0]
    score, s, e = best_span(start, end, OFFSETS, n_best=20, max_answer_length=30)
    assert (s, e) == (4, 12) and score == 9  # tokens 4..5
    # end before start is never chosen
    assert best_span([0, 0, 0, 0, 0, 0, 9, 0], [0, 0, 0, 9, 0, 0, 0, 0], OFFSETS, 20, 30)[1:] != (13, 3)
    # max_answer_length=1 only allows single tokens
    _, s, e = best_span(start, end, OFFSETS, n_best=20, max_answer_length=1)
    assert (s, e) in {(0, 3), (4, 7), (8, 12), (13, 17)}


def test_best_span_ignores_padding_beyond_the_window():
    start = [0, 0, 0, 1, 0, 0, 0, 0, 50]  # logit 50 on a padded position past the offsets
    end = [0, 0, 0, 1, 0, 0, 0, 0, 50]
    assert best_span(start, end, OFFSETS, 20, 30)[1:] == (0, 3)


def test_postprocess_picks_best_window_per_example():
    context = "Ada was born in 1815 in London"
    examples = [{"id": "a", "context": context}, {"id": "b", "context": context}]
    features = {
        "example_id": ["a", "a", "b"],
        "offset_mapping": [
            [None, (0, 3), (4, 7)],
            [None, (16, 20), (24, 30)],
            [None, None, None],  # nothing but question tokens: empty answer
        ],
    }
    start = [[0, 1, 0], [0, 5, 0], [0, 0, 0]]
    end = [[0, 1, 0], [0, 0, 4], [0, 0, 0]]
    predictions = postprocess(examples, features, start, end, n_best=20, max_answer_length=30)
    assert predictions == {"a": "1815 in London", "b": ""}


def test_combining_marks_perfect_logits_score_100(tiny_model):
    """Logits that point exactly at each gold answer's tokens: the answers ending in combining marks
    come back whole, so EM and F1 are 100."""
    import numpy as np

    from engine.models import load_tokenizer
    from stages.tokenize import prepare_train_features, prepare_validation_features
    from test_tokenize import combining_mark_examples

    tokenizer = load_tokenizer(str(tiny_model))
    examples = combining_mark_examples()
    batch = {key: [e[key] for e in examples] for key in examples[0]}
    labels = prepare_train_features(batch, tokenizer, max_length=64, doc_stride=16).to_pydict()
    features = prepare_validation_features(batch, tokenizer, max_length=64, doc_stride=16).to_pydict()
    starts = np.zeros((len(features["input_ids"]), 64))
    ends = np.zeros_like(starts)
    for window, (start, end) in enumerate(zip(labels["start_positions"], labels["end_positions"])):
        starts[window, start] = ends[window, end] = 10.0
    predictions = postprocess(examples, features, starts, ends, n_best=20, max_answer_length=30)
    assert predictions == {e["id"]: e["answers"]["text"][0] for e in examples}
    assert squad_scores(predictions, examples) == {"exact_match": 100.0, "f1": 100.0}


def test_windows_per_second_is_the_windows_over_the_prediction_pass(tiny_model, monkeypatch):
    """Throughput counts every window through the model, over the time the logits took (not scoring)."""
    import datasets
    import torch

    from engine.models import load_qa_model, load_tokenizer
    from stages import evaluate as evaluate_stage
    from stages.params import validate
    from stages.tokenize import prepare_validation_features
    from conftest import tiny_params
    from test_tokenize import combining_mark_examples

    tokenizer = load_tokenizer(str(tiny_model))
    examples = combining_mark_examples()
    batch = {key: [e[key] for e in examples] for key in examples[0]}
    features = datasets.Dataset(prepare_validation_features(batch, tokenizer, max_length=64, doc_stride=16))
    clock = iter([100.0, 104.0])  # the pass starts at 100 s and its logits are back at 104 s
    monkeypatch.setattr(evaluate_stage, "perf_counter", lambda: next(clock))
    scores = evaluate_stage.evaluate_variant(load_qa_model(str(tiny_model)), tokenizer, examples, features,
                                             validate(tiny_params(tiny_model)), torch.device("cpu"), "dense")
    assert scores["windows_per_s"] == round(len(features) / 4.0, 1)
    assert set(scores) == {"exact_match", "f1", "windows_per_s"}
