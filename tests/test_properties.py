"""Property-based tests (hypothesis) for span mapping and post-processing, and a fuzz run over
malformed SQuAD JSON that may end only in the reader's clear StageError."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.models import load_tokenizer
from engine.spans import context_offsets
from stages.common import StageError
from stages.evaluate import best_span
from stages.model_source import resolve_model_source
from stages.tokenize import prepare_train_features, read_squad_json

WORDS = ["river", "Ada", "1815", "London", "the", "of", "telescope", "born", "in", "married", "Zorwil", "Bay", ",", ".",
         "Zürich", "naïve", "Москва", "東京", "Ωmega", "São", "ʻOkina", "١٩٤٨", "café\u0301"]
SPACES = [" ", "  ", "\n", "\t", "\u00a0", " \n "]
TOKENIZER = load_tokenizer(resolve_model_source("embedded"))


@st.composite
def qa_examples(draw):
    """A context of words (several scripts) joined by assorted whitespace, and an answer span of
    whole words that may carry the whitespace around it, as hand-made SQuAD files often do."""
    words = draw(st.lists(st.sampled_from(WORDS), min_size=3, max_size=60))
    gaps = [draw(st.sampled_from(SPACES)) for _ in words[1:]] + [""]
    pieces = [w + g for w, g in zip(words, gaps)]
    first = draw(st.integers(0, len(words) - 1))
    last = draw(st.integers(first, min(len(words) - 1, first + 4)))
    start = len("".join(pieces[:first]))
    end = start + len("".join(pieces[first:last + 1])) - len(gaps[last])
    if first and draw(st.booleans()):
        start -= len(gaps[first - 1])  # leading whitespace
    if draw(st.booleans()):
        end += len(gaps[last])  # trailing whitespace
    context = "".join(pieces)
    return {"id": ["q"], "question": [draw(st.sampled_from(["Who?", "When was it?", "Where did the river go?"]))],
            "context": [context], "answers": [{"text": [context[start:end]], "answer_start": [start]}]}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(example=qa_examples(), max_length=st.integers(24, 64), stride=st.integers(4, 10))
def test_every_labelled_span_maps_back_to_the_answer(example, max_length, stride):
    features = prepare_train_features(example, TOKENIZER, max_length, stride).to_pydict()
    enc = TOKENIZER(example["question"], example["context"], truncation="only_second", max_length=max_length,
                    stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    answer = example["answers"][0]["text"][0]
    answer_start = example["answers"][0]["answer_start"][0]
    core_start = answer_start + len(answer) - len(answer.lstrip())
    core_end = answer_start + len(answer.rstrip())
    for i, (s, e) in enumerate(zip(features["start_positions"], features["end_positions"])):
        sequence_ids = enc.sequence_ids(i)
        # as the labels see the context: a token's span runs on over the combining marks after it
        offsets = context_offsets(enc["offset_mapping"][i], sequence_ids, 1, example["context"][0])
        window = [k for k, sid in enumerate(sequence_ids) if sid == 1]
        fully_inside = offsets[window[0]][0] <= core_start and offsets[window[-1]][1] >= core_end
        if not fully_inside:
            assert (s, e) == (0, 0)
        else:
            assert sequence_ids[s] == 1 and sequence_ids[e] == 1
            # the tightest token span around the answer's characters that tokens cover (a combining
            # accent that the uncased tokenizer drops is covered by none)
            covered = [c for c in range(core_start, core_end) if any(offsets[k][0] <= c < offsets[k][1] for k in window)]
            assert (offsets[s][0], offsets[e][1]) == (covered[0], covered[-1] + 1)
            if "\u0301" not in answer:  # then exactly the answer's text, without the whitespace around it
                assert example["context"][0][offsets[s][0]:offsets[e][1]] == answer.strip()


@st.composite
def windows(draw):
    length = draw(st.integers(2, 24))
    question = draw(st.integers(1, length - 1))
    offsets = [None] * question + [(3 * k, 3 * k + 2) for k in range(length - question)]
    logits = st.lists(st.floats(-10, 10, allow_nan=False), min_size=length, max_size=length + 4)
    return offsets, draw(logits), draw(logits), draw(st.integers(1, 30))


@settings(max_examples=300, deadline=None)
@given(window=windows())
def test_best_span_is_the_best_valid_span(window):
    offsets, start, end, max_len = window
    found = best_span(start, end, offsets, n_best=len(start), max_answer_length=max_len)
    valid = [(start[s] + end[e], s, e) for s in range(len(offsets)) for e in range(len(offsets))
             if offsets[s] is not None and offsets[e] is not None and s <= e < s + max_len]
    best = max(score for score, _, _ in valid)
    assert found is not None and found[0] == pytest.approx(best, abs=1e-4)
    assert found[1] <= found[2]


MUTATIONS = ("truncate", "drop_key", "retype", "shift_start", "bytes", "empty")


def mutate(doc: dict, rng: np.random.Generator) -> bytes:
    """One random corruption of a valid SQuAD document."""
    kind = MUTATIONS[rng.integers(len(MUTATIONS))]
    text = json.dumps(doc)
    if kind == "truncate":
        return text[: rng.integers(0, len(text))].encode()
    if kind == "bytes":
        raw = bytearray(text.encode())
        for _ in range(rng.integers(1, 5)):
            raw[rng.integers(len(raw))] = int(rng.integers(0, 256))
        return bytes(raw)
    doc = copy.deepcopy(doc)
    paragraph = doc["data"][rng.integers(len(doc["data"]))]["paragraphs"][0]
    qa = paragraph["qas"][rng.integers(len(paragraph["qas"]))]
    targets = [(doc, "data"), (paragraph, "context"), (paragraph, "qas"), (qa, "id"), (qa, "question"),
               (qa, "answers"), (qa["answers"][0], "text"), (qa["answers"][0], "answer_start")]
    node, key = targets[rng.integers(len(targets))]
    if kind == "drop_key":
        del node[key]
    elif kind == "retype":
        node[key] = [None, 3, "x", {}, [], True, -1.5][rng.integers(7)]
    elif kind == "shift_start":
        qa["answers"][0]["answer_start"] += int(rng.integers(-50, 50))
    else:
        node[key] = type(node[key])()
    return json.dumps(doc).encode()


def test_fuzz_malformed_squad_ends_only_in_clear_errors(tmp_path):
    valid = {"version": "1.1", "data": [
        {"title": f"t{a}", "paragraphs": [{"context": "Ada Lovelace was born in 1815 in London.", "qas": [
            {"id": f"{a}-{q}", "question": "When?", "answers": [{"text": "1815", "answer_start": 25}]}
            for q in range(3)]}]} for a in range(3)]}
    rng = np.random.default_rng(7)
    path = tmp_path / "fuzz.json"
    outcomes = {"parsed": 0, "clear error": 0}
    for _ in range(1500):
        path.write_bytes(mutate(valid, rng))
        try:
            read_squad_json(path)
            outcomes["parsed"] += 1
        except StageError as err:
            message = str(err)
            assert message.startswith(str(path)) and "\n" not in message
            outcomes["clear error"] += 1
    assert outcomes["clear error"] > 1000 and outcomes["parsed"] > 0  # both paths exercised
