"""SQuAD v1.1 metric and post-processing, against values computed by hand."""
from __future__ import annotations

import pytest

from stages.evaluate import best_span, exact_match_score, f1_score, normalize_answer, postprocess, squad_v1_scores


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
