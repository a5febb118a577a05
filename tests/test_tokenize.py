"""Reading, splitting and tokenizing SQuAD-format data."""
from __future__ import annotations

import gzip
import json
import unicodedata

import pytest

from engine.models import load_tokenizer
from stages.common import StageError
from stages.model_source import resolve_model_source
from conftest import EMBEDDED_DATA
from stages.tokenize import (
    answer_chars,
    load_splits,
    prepare_train_features,
    prepare_validation_features,
    read_squad_files,
    read_squad_json,
    split_by_article,
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve_model_source("embedded"))


def squad_doc(context="Ada Lovelace was born in 1815 in London.", answer="1815", start=None, **qa_extra):
    start = context.index(answer) if start is None else start
    qa = {"id": "q1", "question": "When was Ada born?", "answers": [{"text": answer, "answer_start": start}]}
    qa.update(qa_extra)
    return {"version": "1.1", "data": [{"title": "Ada", "paragraphs": [{"context": context, "qas": [qa]}]}]}


def write(tmp_path, doc, name="d.json"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def as_batch(examples):
    return {key: [e[key] for e in examples] for key in examples[0]}


def test_read_flattens_to_hub_layout(tmp_path):
    [example] = read_squad_json(write(tmp_path, squad_doc()))
    assert example == {
        "id": "q1", "title": "Ada", "context": "Ada Lovelace was born in 1815 in London.",
        "question": "When was Ada born?", "answers": {"text": ["1815"], "answer_start": [25]},
    }


@pytest.mark.parametrize("content, message", [
    ('{"data": [', "malformed JSON at line 1"),
    ('[1, 2]', "top level"),
    ({"data": [{"paragraphs": "x"}]}, "data[0]: field 'paragraphs' must be a list"),
    ({"data": [{"paragraphs": [{"context": "", "qas": []}]}]}, "data[0].paragraphs[0]: field 'context'"),
    (squad_doc(start=3), "answer_start 3 does not point at its text '1815'"),
    (squad_doc(start=400), "answer_start 400 is outside the context"),
    (squad_doc(question=""), "field 'question' must be a non-empty string"),
    (squad_doc(answers=[]), "field 'answers' must be a non-empty list"),
    ({"data": []}, "no question/answer pairs"),
])
def test_bad_input_names_file_and_field(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(StageError) as err:
        read_squad_json(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_non_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(json.dumps(squad_doc()).replace("Ada", "Ad\u00e9").encode("latin-1"))
    with pytest.raises(StageError, match="not UTF-8"):
        read_squad_json(path)


def test_missing_file(tmp_path):
    with pytest.raises(StageError, match="file not found"):
        read_squad_json(tmp_path / "nope.json")


def test_split_by_article_is_seeded_and_disjoint():
    examples = [{"title": f"t{i % 10}", "id": str(i)} for i in range(100)]
    train, validation = split_by_article(examples, 0.2, seed=1)
    again = split_by_article(examples, 0.2, seed=1)
    assert (train, validation) == again
    assert {e["title"] for e in train}.isdisjoint({e["title"] for e in validation})
    assert len({e["title"] for e in validation}) == 2 and len(train) + len(validation) == 100
    assert split_by_article(examples, 0.2, seed=2)[1] != validation


def test_load_splits_switches_source(params, tmp_path, monkeypatch):
    # files: the embedded default, split by article, capped by params.
    train, validation = load_splits(params)
    assert len(train) == 48 and len(validation) == 24
    # files: the files named in params, inside data.dir, relative to the repository root given.
    (tmp_path / "squad").mkdir()
    write(tmp_path / "squad", squad_doc())
    params["data"].update(dir="squad", train_files=["d.json"], max_train_examples=0)
    with pytest.raises(StageError, match="the train split is empty"):
        load_splits(params, root=tmp_path)  # one article cannot fill both splits
    # squad: goes to the hub through datasets.load_dataset.
    calls = []
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda name: calls.append(name) or {
        "train": [{"id": "a"}], "validation": [{"id": "b"}]})
    params["data"]["source"] = "squad"
    assert load_splits(params) == ([{"id": "a"}], [{"id": "b"}]) and calls == ["squad"]


def two_articles(prefix: str) -> dict:
    return {"data": [squad_doc(id=f"{prefix}{n}")["data"][0] | {"title": f"{prefix}-title{n}"} for n in range(2)]}


def test_validation_files_replace_the_split(params, tmp_path):
    write(tmp_path, two_articles("t"), "train.json")
    write(tmp_path, two_articles("v"), "dev.json")
    params["data"].update(dir=str(tmp_path), train_files=["train.json"], validation_files=["dev.json"])
    train, validation = load_splits(params)
    assert [e["id"] for e in train] == ["t0", "t1"] and [e["id"] for e in validation] == ["v0", "v1"]


def test_gzip_files_read_as_they_are(tmp_path):
    plain = write(tmp_path, squad_doc())
    packed = tmp_path / "d.json.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_squad_json(packed) == read_squad_json(plain)


@pytest.mark.parametrize("content, message", [
    (b'{"data": []}', r"d.json.gz: not a gzip file \(the name ends in .gz\)$"),
    (gzip.compress(json.dumps(squad_doc()).encode())[:-12], r"d.json.gz: truncated gzip file"),
])
def test_bad_gzip_is_one_line_naming_the_file(tmp_path, content, message):
    (tmp_path / "d.json.gz").write_bytes(content)
    with pytest.raises(StageError, match=message):
        read_squad_json(tmp_path / "d.json.gz")


def test_question_ids_must_be_unique_across_files(params, tmp_path):
    # SQuAD dev and XQuAD-en share ids: scoring them together would merge questions.
    first, second = write(tmp_path, two_articles("q"), "a.json"), write(tmp_path, two_articles("q"), "b.json")
    with pytest.raises(StageError, match=r"b.json: question id 'q0' is also in .*a.json"):
        read_squad_files([first], [second])
    params["data"].update(dir=str(tmp_path), train_files=["a.json", "b.json"])
    with pytest.raises(StageError, match="ids must be unique across all data files"):
        load_splits(params)


@pytest.mark.parametrize("files, message", [
    ({"train_files": []}, "data.train_files is empty"),
    ({"train_files": ["/abs/train.json"]}, "must be a file name inside data.dir"),
    ({"train_files": ["../elsewhere/train.json"]}, "must be a file name inside data.dir"),
    ({"train_files": ["missing.json.gz"]}, "missing.json.gz: file not found"),
    ({"train_files": ["."]}, "is a directory"),
])
def test_bad_data_files_fail_with_one_line(params, tmp_path, files, message):
    from stages.params import ParamError

    params["data"].update(dir=str(tmp_path), **files)
    with pytest.raises((StageError, ParamError), match=message):
        load_splits(params)


def test_answer_chars_drop_surrounding_whitespace():
    assert answer_chars(" 1815\n", 24) == (25, 29)
    assert answer_chars("1815", 25) == (25, 29)


def test_hub_failure_is_one_clear_line(params, monkeypatch):
    import datasets

    def offline(name):
        raise ConnectionError("Couldn't reach the hub\nlong traceback text")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    params["data"]["source"] = "squad"
    with pytest.raises(StageError, match=r"^data.source=squad: cannot load 'squad' from the hub: Couldn't reach the hub$"):
        load_splits(params)


def test_train_spans_round_trip_to_answer_text(tokenizer):
    """Every labelled span decodes back to its answer; windows without the whole answer get (0, 0)."""
    examples = read_squad_json(EMBEDDED_DATA)[:200]
    batch = as_batch(examples)
    # Short windows force many answers to be cut off or to sit in a later window.
    features = prepare_train_features(batch, tokenizer, max_length=48, doc_stride=16).to_pydict()
    enc = tokenizer([q.lstrip() for q in batch["question"]], batch["context"], truncation="only_second",
                    max_length=48, stride=16, return_overflowing_tokens=True, return_offsets_mapping=True)
    labelled = cut_off = 0
    for i, (start, end) in enumerate(zip(features["start_positions"], features["end_positions"])):
        example = examples[enc["overflow_to_sample_mapping"][i]]
        answer = example["answers"]["text"][0]
        if start == 0:
            assert end == 0
            cut_off += 1
            continue
        labelled += 1
        context_ids = [k for k, s in enumerate(enc.sequence_ids(i)) if s == 1]
        assert context_ids[0] <= start <= end <= context_ids[-1]  # never in question or padding
        offsets = enc["offset_mapping"][i]
        assert example["context"][offsets[start][0]:offsets[end][1]] == answer
    assert labelled >= 200 and cut_off > 0  # every example is answerable in some window


def test_validation_features_keep_context_offsets_only(tokenizer):
    examples = read_squad_json(EMBEDDED_DATA)[:20]
    features = prepare_validation_features(as_batch(examples), tokenizer, max_length=48, doc_stride=16).to_pydict()
    assert set(features["example_id"]) == {e["id"] for e in examples}
    assert len(features["example_id"]) > len(examples)  # long contexts overflow into several windows
    for ids, types, offsets in zip(features["input_ids"], features["token_type_ids"], features["offset_mapping"]):
        for token, token_type, offset in zip(ids, types, offsets):
            # the context's tokens are those of type 1 but the last [SEP]
            assert (offset is None) == (token_type == 0 or token == tokenizer.sep_token_id)


def test_question_longer_than_a_window_is_one_clear_error(tokenizer):
    batch = {"id": ["long-q"], "question": ["word " * 100], "context": ["Ada was born in 1815."],
             "answers": [{"text": ["1815"], "answer_start": [16]}]}
    with pytest.raises(StageError, match=r"question 'long-q' is 100 tokens: too long for tokenize.max_length=64"):
        prepare_train_features(batch, tokenizer, max_length=64, doc_stride=16)


def test_context_far_longer_than_a_window_becomes_many_windows(tokenizer):
    context = "filler text here. " * 300 + "Ada was born in 1815."
    batch = {"id": ["long-c"], "question": ["When was Ada born?"], "context": [context],
             "answers": [{"text": ["1815"], "answer_start": [context.index("1815")]}]}
    features = prepare_train_features(batch, tokenizer, max_length=64, doc_stride=16).to_pydict()
    assert len(features["input_ids"]) > 20 and all(len(ids) <= 64 for ids in features["input_ids"])
    assert sum(s > 0 for s in features["start_positions"]) >= 1  # the answer sits in a late window


# Words whose last character is followed by combining marks: decomposed accents, a Devanagari vowel
# sign, Arabic vowel marks. The uncased tokenizer strips the marks, so its offsets end before them.
COMBINING_WORDS = ["café", unicodedata.normalize("NFD", "café"), "Malmö", unicodedata.normalize("NFD", "Malmö"),
                   "नमस्ते", "مُحَمَّدٌ", "क्\u200d"]


def combining_mark_examples() -> list[dict]:
    """Each word once inside a context and once at its very end."""
    examples = []
    for n, word in enumerate(COMBINING_WORDS):
        for k, context in enumerate((f"They met at {word} on Monday.", f"They met at {word}")):
            examples.append({"id": f"w{n}-{k}", "title": "marks", "context": context, "question": "Where did they meet?",
                             "answers": {"text": [word], "answer_start": [context.index(word)]}})
    return examples


def test_combining_marks_training_labels_cover_the_whole_answer(tokenizer):
    examples = combining_mark_examples()
    batch = as_batch(examples)
    features = prepare_train_features(batch, tokenizer, max_length=64, doc_stride=16).to_pydict()
    validation = prepare_validation_features(batch, tokenizer, max_length=64, doc_stride=16).to_pydict()
    assert len(features["input_ids"]) == len(examples)  # one window each
    for example, start, end, offsets in zip(examples, features["start_positions"], features["end_positions"],
                                            validation["offset_mapping"]):
        assert start > 0, example["context"]
        assert example["context"][offsets[start][0]:offsets[end][1]] == example["answers"]["text"][0]


def test_span_end_moves_over_marks_and_joiners_only():
    from engine.spans import span_end

    assert span_end("cafe\u0301 x", 4) == 5
    assert span_end("a\u200d\u200cb", 1) == 3
    assert span_end("ab", 1) == 1 and span_end("a", 1) == 1
