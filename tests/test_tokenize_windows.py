"""The tokenize stage's windows: the ones the tokenizer's own overflow makes, for every tokenizer family
the project runs, and a huge context's memory."""
from __future__ import annotations

import json
import tracemalloc

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AlbertTokenizer, DistilBertTokenizer, RobertaTokenizer, XLNetTokenizer

import stages.tokenize
from engine.models import load_tokenizer
from engine.spans import context_offsets
from stages.common import StageError
from stages.model_source import resolve_model_source
from stages.tokenize import (
    prepare_train_features,
    prepare_validation_features,
    question_context_windows,
    read_squad_json,
    tokenize_context,
)
from conftest import SHARED_DATA
from test_tokenize import as_batch, combining_mark_examples

SQUAD_DEV = SHARED_DATA / "squad-v1.1" / "dev-v1.1.json.gz"
EMBEDDED = resolve_model_source("embedded")


@pytest.fixture(scope="module")
def squad_examples() -> list[dict]:
    if not SQUAD_DEV.is_file():
        pytest.skip("official SQuAD files not on this machine")
    return read_squad_json(SQUAD_DEV)[:300]


def trained(model, pre_tokenizer, trainer, texts) -> dict:
    """The model section of a tokenizer trained on `texts`: a small vocabulary of real word pieces."""
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.train_from_iterator(texts, trainer)
    return json.loads(tokenizer.to_str())["model"]


def family_tokenizers(texts: list[str]) -> dict:
    """One tokenizer per family the project runs, from vocabularies trained on `texts`: BERT (the
    embedded model's; ELECTRA's is the same class), DistilBERT (no token type ids), RoBERTa (byte-level
    BPE, a space belongs to the word after it), ALBERT (SentencePiece unigram), XLNet (the context first),
    and BERT truncating on the left."""
    bert = load_tokenizer(EMBEDDED)
    lowered = [text.lower() for text in texts]
    bpe = trained(models.BPE(), pre_tokenizers.ByteLevel(add_prefix_space=False),
                  trainers.BpeTrainer(vocab_size=800, special_tokens=["<pad>", "<unk>", "<s>", "</s>", "<mask>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False), texts)
    albert_vocab = trained(models.Unigram(), pre_tokenizers.Metaspace(), trainers.UnigramTrainer(
        vocab_size=800, special_tokens=["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"], unk_token="<unk>",
        show_progress=False), lowered)["vocab"]
    xlnet_vocab = trained(models.Unigram(), pre_tokenizers.Metaspace(), trainers.UnigramTrainer(
        vocab_size=800, special_tokens=["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>"], unk_token="<unk>",
        show_progress=False), texts)["vocab"]
    left = load_tokenizer(EMBEDDED)
    left.truncation_side = "left"
    return {
        "bert": bert,
        "distilbert": DistilBertTokenizer(vocab=bert.get_vocab()),
        "roberta": RobertaTokenizer(vocab=bpe["vocab"], merges=[tuple(m) for m in bpe["merges"]]),
        "albert": AlbertTokenizer(vocab=[tuple(v) for v in albert_vocab]),
        "xlnet": XLNetTokenizer(vocab=[tuple(v) for v in xlnet_vocab]),
        "bert-left": left,
    }


@pytest.fixture(scope="module")
def families(squad_examples) -> dict:
    return family_tokenizers(sorted({e["context"] for e in squad_examples}))


def overflow_windows(batch: dict, tokenizer, max_length: int, doc_stride: int) -> list[dict]:
    """What the stage made before it cut windows itself: the tokenizer's own overflowing windows, the
    context's offsets as engine.spans reads them."""
    question_first = tokenizer.padding_side == "right"
    questions = [q.lstrip() for q in batch["question"]]
    encoded = tokenizer(questions if question_first else batch["context"],
                        batch["context"] if question_first else questions,
                        truncation="only_second" if question_first else "only_first", max_length=max_length,
                        stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    windows = []
    for i, sample in enumerate(encoded["overflow_to_sample_mapping"]):
        columns = {name: encoded[name][i] for name in encoded if name not in ("offset_mapping", "overflow_to_sample_mapping")}
        offsets = context_offsets(encoded["offset_mapping"][i], encoded.sequence_ids(i), int(question_first),
                                  batch["context"][sample])
        windows.append({"sample": sample, "columns": columns, "offsets": offsets})
    return windows


def cut_windows(batch: dict, tokenizer, max_length: int, doc_stride: int) -> list[dict]:
    return [{"sample": w.sample, "columns": w.columns, "offsets": w.offsets()}
            for w in question_context_windows(batch, tokenizer, max_length, doc_stride)]


def edge_examples() -> list[dict]:
    """A context shorter than one window, one far longer, and contexts ending in combining marks."""
    long_context = "The survey crossed the river near the old mill. " * 40 + "It ended at Zorwil Bay in 1815."
    return combining_mark_examples() + [
        {"id": "short", "title": "t", "context": "Ada was born in 1815.", "question": "When was Ada born?",
         "answers": {"text": ["1815"], "answer_start": [16]}},
        {"id": "long", "title": "t", "context": long_context, "question": "  Where did the survey end?",
         "answers": {"text": ["Zorwil Bay"], "answer_start": [long_context.index("Zorwil")]}},
    ]


@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta", "albert", "xlnet", "bert-left"])
@pytest.mark.parametrize("max_length, doc_stride", [(384, 128), (64, 16)])
def test_windows_are_the_tokenizers_own(families, squad_examples, family, max_length, doc_stride, monkeypatch):
    """Every window, column and context offset as the tokenizer's overflow makes them, on SQuAD dev and
    edge cases, with each context cut into pieces of a few words to tokenize."""
    monkeypatch.setattr(stages.tokenize, "CONTEXT_PIECE_CHARS", 40)
    tokenizer = families[family]
    # the small trained vocabularies make some questions too long for 64 tokens (the stage says so)
    room = max_length - doc_stride - tokenizer.num_special_tokens_to_add(pair=True)
    examples = [e for e in squad_examples + edge_examples()
                if len(tokenizer(e["question"].lstrip(), add_special_tokens=False)["input_ids"]) < room]
    batch = as_batch(examples)
    expected = overflow_windows(batch, tokenizer, max_length, doc_stride)
    windows = cut_windows(batch, tokenizer, max_length, doc_stride)
    assert len(windows) == len(expected) > len(examples) > 200
    for window, reference in zip(windows, expected):
        assert window == reference


def test_a_template_with_the_second_sequence_first_is_followed(squad_examples):
    tokenizer = load_tokenizer(EMBEDDED)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $B:1 [SEP]:1 $A [SEP]", special_tokens=[("[CLS]", 101), ("[SEP]", 102)])
    batch = as_batch(squad_examples[:50])
    windows = cut_windows(batch, tokenizer, 64, 16)
    assert windows == overflow_windows(batch, tokenizer, 64, 16) and windows[0]["offsets"][1] == (0, 5)


def test_a_template_that_repeats_a_sequence_is_one_clear_error():
    tokenizer = load_tokenizer(EMBEDDED)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1 $A", special_tokens=[("[CLS]", 101), ("[SEP]", 102)])
    batch = {"id": ["q"], "question": ["When?"], "context": ["Ada was born in 1815."]}
    with pytest.raises(StageError, match=r"the tokenizer lays out a pair as \['\[CLS\]', 'a', '\[SEP\]', 'b', "
                                         r"'\[SEP\]', 'a'\]: expected each sequence once"):
        next(question_context_windows(batch, tokenizer, 64, 16))


def test_a_context_cut_into_pieces_has_the_tokens_of_the_whole(monkeypatch):
    tokenizer = load_tokenizer(EMBEDDED)
    context = "Zürich, naïve café\u0301 — the river's 1,815 km; ʻOkina 東京. " * 30
    whole = tokenize_context(tokenizer, context)
    monkeypatch.setattr(stages.tokenize, "CONTEXT_PIECE_CHARS", 50)
    pieces = tokenize_context(tokenizer, context)
    assert len(whole.ids) > 300
    for name in ("ids", "starts", "ends"):
        assert getattr(pieces, name).tolist() == getattr(whole, name).tolist()


def test_a_cut_that_changes_tokens_tokenizes_the_context_whole(monkeypatch):
    """A tokenizer whose tokens run across spaces (its normalizer drops them): a cut at a space would
    change them, so the context is tokenized in one piece."""
    tokenizer = load_tokenizer(EMBEDDED)
    backend = tokenizer.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Replace(" ", ""), backend.normalizer])
    context = "abc def ghi. " * 60
    monkeypatch.setattr(stages.tokenize, "CONTEXT_PIECE_CHARS", 45)  # cuts between "abc", "def" and "ghi"
    assert tokenize_context(tokenizer, context).ids.tolist() == tokenizer(context, add_special_tokens=False)["input_ids"]
    assert tokenizer("abc", add_special_tokens=False)["input_ids"] + tokenizer(" def", add_special_tokens=False)[
        "input_ids"] != tokenizer("abc def", add_special_tokens=False)["input_ids"]  # such a cut changes tokens


def covering_tokens(offsets: list, start_char: int, end_char: int) -> tuple[int, int]:
    """The first and last token over the answer's characters, (0, 0) unless the window holds it whole."""
    context = [k for k, span in enumerate(offsets) if span is not None]
    over = [k for k in context if offsets[k][0] < end_char and offsets[k][1] > start_char]
    holds = offsets[context[0]][0] <= start_char and offsets[context[-1]][1] >= end_char
    return (over[0], over[-1]) if holds else (0, 0)


def test_answer_at_a_window_boundary_is_labelled_only_where_whole():
    """An answer whose last token ends the first window is labelled there and in the next window (they
    overlap); one word longer, it is cut off in the first and labelled in the next."""
    tokenizer = load_tokenizer(EMBEDDED)
    context = " ".join(f"word{n}" if n % 2 else "river" for n in range(120))
    question = "Which word?"
    windows = overflow_windows({"id": ["p"], "question": [question], "context": [context]}, tokenizer, 64, 16)
    first_window_end = max(k for k, span in enumerate(windows[0]["offsets"]) if span is not None)
    last_char = windows[0]["offsets"][first_window_end][1]
    start = context.rindex(" ", 0, last_char) + 1
    answers = (context[start:last_char], context[start:context.index(" ", last_char + 1)])
    examples = [{"id": f"q{n}", "title": "t", "context": context, "question": question,
                 "answers": {"text": [text], "answer_start": [start]}} for n, text in enumerate(answers)]
    features = prepare_train_features(as_batch(examples), tokenizer, 64, 16).to_pydict()
    labels = list(zip(features["start_positions"], features["end_positions"]))
    assert labels == [covering_tokens(window["offsets"], start, start + len(text))
                      for text in answers for window in windows]
    assert labels[0][1] == first_window_end and labels[1] != (0, 0)
    assert labels[len(windows)] == (0, 0) and labels[len(windows) + 1] != (0, 0)


def test_question_too_long_for_any_window_is_one_clear_error_for_every_family(families):
    batch = {"id": ["long-q"], "question": ["word " * 100], "context": ["Ada was born in 1815."],
             "answers": [{"text": ["1815"], "answer_start": [16]}]}
    for tokenizer in families.values():
        with pytest.raises(StageError, match=r"question 'long-q' is \d+ tokens: too long for tokenize.max_length=64"):
            prepare_validation_features(batch, tokenizer, max_length=64, doc_stride=16)


def huge_context_example(megabytes: float) -> dict:
    words = "the river ran past the old mill and on to the sea".split()
    context = " ".join(words[n % len(words)] for n in range(int(megabytes * 1_000_000 / 4.5)))
    context = context[:len(context) // 2] + " Zorwil Bay " + context[len(context) // 2:]
    return {"id": ["huge"], "question": ["Where did the river end?"], "context": [context],
            "answers": [{"text": ["Zorwil Bay"], "answer_start": [context.index("Zorwil")]}]}


def traced_peak(function, *args) -> tuple[int, object]:
    """The most memory Python objects (numpy arrays included) held at once while `function` ran."""
    tracemalloc.start()
    try:
        result = function(*args)
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_huge_context_memory_stays_flat(monkeypatch):
    """A context 4 times longer costs little more than its tokens' arrays: the tokenizer is only ever
    given a piece of it, and its windows reach Arrow a few at a time instead of standing all at once
    as Python lists (which took about 80 bytes a character of context)."""
    tokenizer = load_tokenizer(EMBEDDED)
    longest_text = []
    call = type(tokenizer).__call__

    def measured_call(self, *texts, **kwargs):
        longest_text.append(max(len(text) if isinstance(text, str) else max(map(len, text)) for text in texts))
        return call(self, *texts, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", measured_call)
    prepare_validation_features(huge_context_example(0.001), tokenizer, 384, 128)  # imports, outside the measure
    peaks = {}
    for megabytes in (0.2, 0.8):
        peaks[megabytes], features = traced_peak(prepare_validation_features, huge_context_example(megabytes),
                                                 tokenizer, 384, 128)
        assert len(features["input_ids"]) > 800 * megabytes  # windows: about 900 a megabyte
    assert peaks[0.8] - peaks[0.2] < 10_000_000, peaks
    assert max(longest_text) < stages.tokenize.CONTEXT_PIECE_CHARS + 100
