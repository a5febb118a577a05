"""tokenize: read SQuAD-format data, split it, and turn it into model features.

Pre-processing follows Hugging Face's run_qa.py: question/context pairs, truncation of the
context only, overflowing windows with a doc stride, offset mappings and example ids for
validation, answer start/end token positions for training ((0, 0) when the window cuts the
answer off). Unlike the seed tutorial, the end of the context is found explicitly, so a span
is never labelled inside the padding or the question. The windows are the ones the tokenizer makes
for a pair, cut from each context tokenized once and handed on a few at a time, so that a huge
context costs memory for its tokens, not for all its windows at once.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from engine.errors import first_line
from engine.spans import span_end

from .common import StageError
from .data_files import data_files

MIN_EXAMPLES_PER_PROCESS = 2000


# --------------------------------------------------------------------------- reading
def read_squad_json(path: str | Path) -> list[dict]:
    """Flatten a SQuAD v1.1 JSON file (or .json.gz) into examples, checking every field on the way.

    Each example is {id, title, context, question, answers: {text: [...], answer_start: [...]}},
    the layout of the hub's "squad" data set.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise StageError(f"{path}: file not found (data.dir, data.train_files, data.validation_files)") from None
    except IsADirectoryError:
        raise StageError(f"{path}: is a directory, expected a SQuAD JSON file") from None
    except OSError as err:
        raise StageError(f"{path}: cannot read ({err.strerror})") from None
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except gzip.BadGzipFile:
            raise StageError(f"{path}: not a gzip file (the name ends in .gz)") from None
        except EOFError:
            raise StageError(f"{path}: truncated gzip file (it ends before the compressed data does)") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise StageError(f"{path}: not UTF-8 text (byte {err.start}: {raw[err.start:err.start + 1]!r})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise StageError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None

    def need(cond: bool, where: str, what: str):
        if not cond:
            raise StageError(f"{path}: {where}: {what}")

    need(isinstance(doc, dict) and isinstance(doc.get("data"), list), "top level", "expected {\"data\": [...]}")
    examples, seen_ids = [], set()
    for a, article in enumerate(doc["data"]):
        where = f"data[{a}]"
        need(isinstance(article, dict), where, "expected an object")
        need(isinstance(article.get("paragraphs"), list), where, "field 'paragraphs' must be a list")
        title = article.get("title", f"article-{a}")
        need(isinstance(title, str), where, "field 'title' must be a string")
        for p, paragraph in enumerate(article["paragraphs"]):
            where = f"data[{a}].paragraphs[{p}]"
            need(isinstance(paragraph, dict), where, "expected an object")
            context = paragraph.get("context")
            need(isinstance(context, str) and context.strip() != "", where, "field 'context' must be a non-empty string")
            need(isinstance(paragraph.get("qas"), list), where, "field 'qas' must be a list")
            for q, qa in enumerate(paragraph["qas"]):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                need(isinstance(qa, dict), where, "expected an object")
                qid, question = qa.get("id"), qa.get("question")
                need(isinstance(qid, (str, int)) and not isinstance(qid, bool), where, "field 'id' must be a string")
                qid = str(qid)
                need(qid not in seen_ids, where, f"duplicate id {qid!r}")
                seen_ids.add(qid)
                need(isinstance(question, str) and question.strip() != "", where, "field 'question' must be a non-empty string")
                answers = qa.get("answers")
                need(isinstance(answers, list) and len(answers) > 0, where, "field 'answers' must be a non-empty list")
                texts, starts = [], []
                for n, answer in enumerate(answers):
                    at = f"{where}.answers[{n}]"
                    need(isinstance(answer, dict), at, "expected an object")
                    answer_text, start = answer.get("text"), answer.get("answer_start")
                    need(isinstance(answer_text, str) and answer_text.strip() != "", at,
                         "field 'text' must be a non-empty string (not only whitespace)")
                    need(isinstance(start, int) and not isinstance(start, bool), at, "field 'answer_start' must be an integer")
                    need(0 <= start <= len(context) - len(answer_text), at,
                         f"answer_start {start} is outside the context (length {len(context)})")
                    need(context[start:start + len(answer_text)] == answer_text, at,
                         f"answer_start {start} does not point at its text {answer_text!r} "
                         f"(context there: {context[start:start + len(answer_text)]!r})")
                    texts.append(answer_text)
                    starts.append(start)
                examples.append({
                    "id": qid, "title": title, "context": context, "question": question,
                    "answers": {"text": texts, "answer_start": starts},
                })
    need(len(examples) > 0, "data", "no question/answer pairs")
    return examples


def split_by_article(examples: list[dict], validation_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded split by article title, so no paragraph appears on both sides."""
    titles = sorted({e["title"] for e in examples})
    random.Random(seed).shuffle(titles)
    n_validation = math.ceil(len(titles) * validation_fraction)
    validation_titles = set(titles[:n_validation])
    train = [e for e in examples if e["title"] not in validation_titles]
    validation = [e for e in examples if e["title"] in validation_titles]
    return train, validation


def read_squad_files(*groups: list[Path]) -> list[list[dict]]:
    """The examples of each group of SQuAD files. Question ids must be unique across all files:
    evaluation groups windows and answers by id, so a shared id would merge two questions' scores."""
    first_seen: dict[str, Path] = {}
    read = []
    for paths in groups:
        examples = []
        for path in paths:
            for example in read_squad_json(path):
                if example["id"] in first_seen:
                    raise StageError(f"{path}: question id {example['id']!r} is also in {first_seen[example['id']]}: "
                                     f"ids must be unique across all data files")
                first_seen[example["id"]] = path
                examples.append(example)
        read.append(examples)
    return read


def load_splits(params, root: Path = Path(".")) -> tuple[list[dict], list[dict]]:
    """The train and validation examples that params' data section asks for.

    data.source=files: with data.validation_files, train on data.train_files and validate on
    those; without, data.train_files is split by article (data.validation_fraction)."""
    source = params["data.source"]
    if source == "squad":
        train, validation = _load_hub_squad()
    else:
        train_files = data_files(params, "data.train_files", root)
        validation_files = data_files(params, "data.validation_files", root)
        if not train_files:
            raise StageError("params.yaml: data.train_files is empty: name the SQuAD v1.1 files (.json or .json.gz) "
                             "in data.dir to train on")
        if validation_files:
            train, validation = read_squad_files(train_files, validation_files)
        else:
            [examples] = read_squad_files(train_files)
            train, validation = split_by_article(examples, params["data.validation_fraction"], params["seed"])
    for name, split, cap in (("train", train, params["data.max_train_examples"]),
                             ("validation", validation, params["data.max_validation_examples"])):
        if not split:
            raise StageError(f"data.source={source}: the {name} split is empty "
                             f"(too few articles for data.validation_fraction={params['data.validation_fraction']}?)")
        if cap:
            del split[cap:]
    return train, validation


def _load_hub_squad() -> tuple[list[dict], list[dict]]:
    """The tutorial's data: SQuAD v1.1 from the Hugging Face hub (needs hub access)."""
    import datasets

    try:
        squad = datasets.load_dataset("squad")
    except Exception as err:  # the hub raises many types: connection, offline mode, missing
        raise StageError(f"data.source=squad: cannot load 'squad' from the hub: {first_line(err)}") from None
    return [dict(e) for e in squad["train"]], [dict(e) for e in squad["validation"]]


# --------------------------------------------------------------------------- features
# A batch's features go to Arrow this many windows at a time: the windows of a huge context never
# stand all at once as Python lists.
WINDOWS_PER_CHUNK = 64
# A longer context is tokenized in pieces of about this many characters, cut before a whitespace.
CONTEXT_PIECE_CHARS = 100_000
# Each cut is checked on the tokens this many characters either side of it.
CUT_CHECK_CHARS = 200
_WHITESPACE = re.compile(r"\s")


@dataclass(frozen=True)
class PairLayout:
    """Where a tokenizer puts its special tokens, the question and the context in a pair, learnt from
    one probe pair: BERT's [CLS] q [SEP] c [SEP], RoBERTa's <s> q </s></s> c </s>, XLNet's context
    first, without naming a family. `probe` holds the probe's columns (input_ids, and token_type_ids
    and attention_mask where the tokenizer returns them), `spans` each sequence's place in it
    (start, stop, sequence id) in order."""
    probe: dict
    spans: tuple
    context_id: int

    def window(self, question_ids: list[int], context_ids: list[int]) -> dict[str, list[int]]:
        """The columns of the window that holds these question and context tokens."""
        tokens = {self.context_id: context_ids, 1 - self.context_id: question_ids}
        columns = {}
        for name, probe in self.probe.items():
            values, cursor = [], 0
            for start, stop, sequence in self.spans:
                fill = tokens[sequence] if name == "input_ids" else [probe[start]] * len(tokens[sequence])
                values += probe[cursor:start] + fill
                cursor = stop
            columns[name] = values + probe[cursor:]
        return columns

    def context_position(self, question_length: int) -> int:
        """Where a window's first context token stands."""
        (first_start, first_stop, first), (second_start, _, _) = self.spans
        if first == self.context_id:
            return first_start
        return first_start + question_length + second_start - first_stop

    @property
    def special_tokens(self) -> int:
        return len(self.probe["input_ids"]) - sum(stop - start for start, stop, _ in self.spans)


def pair_layout(tokenizer) -> PairLayout:
    """The tokenizer's pair layout; the question first unless the tokenizer pads on the left (XLNet)."""
    probe = tokenizer("a", "b")
    sequence_ids = probe.sequence_ids(0)
    spans = []
    for sequence in (0, 1):
        positions = [k for k, s in enumerate(sequence_ids) if s == sequence]
        if positions and positions == list(range(positions[0], positions[-1] + 1)):
            spans.append((positions[0], positions[-1] + 1, sequence))
    layout = PairLayout({name: list(values) for name, values in probe.items()}, tuple(sorted(spans)),
                        context_id=1 if tokenizer.padding_side == "right" else 0)
    if len(spans) != 2 or layout.special_tokens != tokenizer.num_special_tokens_to_add(pair=True):
        raise StageError(f"model.name={tokenizer.name_or_path}: the tokenizer lays out a pair as "
                         f"{tokenizer.convert_ids_to_tokens(probe['input_ids'])}: expected each sequence once, in one "
                         f"piece, and its special tokens around them")
    return layout


@dataclass(frozen=True)
class ContextTokens:
    """A context's tokens, as the tokenizer tokenizes it inside a pair: their ids and character spans,
    each span's end moved over the combining marks after it (engine.spans)."""
    text: str
    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    def within(self, low: int, high: int) -> list[tuple[int, int, int]]:
        """(id, start, end) of the tokens whose spans lie within characters [low, high]: spans start in
        order, so they are a slice, found by bisection."""
        first = np.searchsorted(self.starts, low, side="left")
        inside = np.flatnonzero(self.ends[first:np.searchsorted(self.starts, high, side="right")] <= high) + first
        return list(zip(self.ids[inside].tolist(), self.starts[inside].tolist(), self.ends[inside].tolist()))


def _tokens(tokenizer, context: str, start: int, stop: int) -> ContextTokens:
    """The tokens of context[start:stop] tokenized alone, their spans in `context`."""
    # verbose=False: a context longer than the model takes is what windows are for, not worth a warning
    encoded = tokenizer(context[start:stop], add_special_tokens=False, return_offsets_mapping=True,
                        return_token_type_ids=False, return_attention_mask=False, verbose=False)
    offsets = encoded["offset_mapping"]
    return ContextTokens(context, np.array(encoded["input_ids"], dtype=np.int32),
                         np.array([begin + start for begin, _ in offsets], dtype=np.int32),
                         np.array([span_end(context, end + start) for _, end in offsets], dtype=np.int32))


def _piece_cuts(context: str) -> list[int]:
    """Where a context's pieces start and end: each cut before the first whitespace at least
    CONTEXT_PIECE_CHARS after the one before."""
    cuts = [0]
    while len(context) - cuts[-1] > CONTEXT_PIECE_CHARS:
        found = _WHITESPACE.search(context, cuts[-1] + CONTEXT_PIECE_CHARS)
        if found is None:
            break
        cuts.append(found.start())
    return cuts + [len(context)]


def tokenize_context(tokenizer, context: str) -> ContextTokens:
    """The context's tokens, a piece at a time: tokenizing a string takes the tokenizers library many
    times the string's size in memory. Each cut is checked against a tokenization across it; if the
    cut changed a token (a tokenizer whose tokens run over whitespace), the context is tokenized whole."""
    cuts = _piece_cuts(context)
    pieces = [_tokens(tokenizer, context, start, stop) for start, stop in zip(cuts, cuts[1:])]
    tokens = ContextTokens(context, *(np.concatenate([getattr(piece, name) for piece in pieces])
                                      for name in ("ids", "starts", "ends")))
    for cut in cuts[1:-1]:
        low, high = cut - CUT_CHECK_CHARS, cut + CUT_CHECK_CHARS
        across = _tokens(tokenizer, context, max(low - CUT_CHECK_CHARS, 0),
                         min(high + CUT_CHECK_CHARS, len(context)))
        if tokens.within(low, high) != across.within(low, high):
            return _tokens(tokenizer, context, 0, len(context))
    return tokens


def window_ranges(length: int, window: int, doc_stride: int, from_end: bool) -> Iterator[tuple[int, int]]:
    """The context tokens [start, stop) of each window, as the tokenizers library cuts an overflowing
    sequence (Encoding.truncate): `window` tokens each, the next `window - doc_stride` further on, until
    one reaches the context's end; from the end backwards for a tokenizer that truncates on the left."""
    if length <= window:
        yield 0, length
        return
    step = window - doc_stride
    if from_end:
        for stop in range(length, 0, -step):
            yield max(stop - window, 0), stop
            if stop <= window:
                return
    else:
        for start in range(0, length, step):
            yield start, min(start + window, length)
            if start + window >= length:
                return


@dataclass(frozen=True)
class Window:
    """One feature's tokens: the `context` tokens [start, stop) at `position`, after or before the question."""
    sample: int
    columns: dict
    context: ContextTokens
    start: int
    stop: int
    position: int

    def offsets(self) -> list:
        """Character spans of the context's tokens, None for the question's, special and padding tokens."""
        offsets = [None] * len(self.columns["input_ids"])
        offsets[self.position:self.position + self.stop - self.start] = zip(
            self.context.starts[self.start:self.stop].tolist(), self.context.ends[self.start:self.stop].tolist())
        return offsets


def question_context_windows(examples: dict, tokenizer, max_length: int, doc_stride: int) -> Iterator[Window]:
    """The windows tokenizer(question, context, truncation="only_second", max_length, stride=doc_stride,
    return_overflowing_tokens=True, return_offsets_mapping=True) makes (context first and "only_first"
    where the tokenizer pads on the left), one at a time. Each context is tokenized once, however many
    windows and questions it has, and each window is cut from its tokens."""
    layout = pair_layout(tokenizer)
    questions = [q.lstrip() for q in examples["question"]]
    # Every window holds the whole question: it must leave more than doc_stride tokens of context.
    room = max_length - doc_stride - layout.special_tokens
    question_ids = tokenizer(questions, add_special_tokens=False, return_token_type_ids=False,
                             return_attention_mask=False)["input_ids"]
    for qid, ids in zip(examples["id"], question_ids):
        if len(ids) >= room:
            raise StageError(f"question {qid!r} is {len(ids)} tokens: too long for tokenize.max_length={max_length} "
                             f"with doc_stride={doc_stride} (a question may take at most {room - 1})")
    context = None
    for sample, (ids, text) in enumerate(zip(question_ids, examples["context"])):
        if context is None or context.text != text:  # a paragraph's questions come one after another
            context = tokenize_context(tokenizer, text)
        ranges = window_ranges(len(context.ids), max_length - layout.special_tokens - len(ids), doc_stride,
                               from_end=tokenizer.truncation_side == "left")
        for start, stop in ranges:
            yield Window(sample, layout.window(ids, context.ids[start:stop].tolist()), context, start, stop,
                         layout.context_position(len(ids)))


def arrow_table(features: Iterator[dict]):
    """The features as an Arrow table, its columns typed as datasets' writer types Python lists (int32
    input_ids, int8 masks), converted WINDOWS_PER_CHUNK features at a time."""
    import pyarrow as pa
    from datasets.arrow_writer import OptimizedTypedSequence

    chunks, pending = defaultdict(list), defaultdict(list)

    def convert():
        for name, values in pending.items():
            chunks[name].append(pa.array(OptimizedTypedSequence(values, col=name)))
        pending.clear()

    for n, feature in enumerate(features, 1):
        for name, value in feature.items():
            pending[name].append(value)
        if n % WINDOWS_PER_CHUNK == 0:
            convert()
    convert()
    return pa.table({name: pa.concat_arrays(arrays) for name, arrays in chunks.items()})


def answer_chars(text: str, start: int) -> tuple[int, int]:
    """The answer's character span without the whitespace at either end, which no token covers."""
    leading = len(text) - len(text.lstrip())
    return start + leading, start + len(text.rstrip())


def answer_tokens(window: Window, start_char: int, end_char: int) -> tuple[int, int]:
    """The answer's first and last token in the window; (0, 0), [CLS], when the window cuts it off."""
    starts = window.context.starts[window.start:window.stop]
    ends = window.context.ends[window.start:window.stop]
    if not len(starts) or starts[0] > start_char or ends[-1] < end_char:
        return 0, 0
    # The tightest token span around the answer's characters: the first token that ends after its
    # start, the last that starts before its end.
    first = int(np.argmax(ends > start_char))
    last = len(starts) - 1 - int(np.argmax(starts[::-1] < end_char))
    if first > last:  # no token covers any of the answer's characters
        return 0, 0
    return window.position + first, window.position + last


def prepare_train_features(examples: dict, tokenizer, max_length: int, doc_stride: int):
    """Batched map function: one feature per window, labelled with the answer's token span."""
    def features():
        for window in question_context_windows(examples, tokenizer, max_length, doc_stride):
            answers = examples["answers"][window.sample]
            start, end = answer_tokens(window, *answer_chars(answers["text"][0], answers["answer_start"][0]))
            yield {**window.columns, "start_positions": start, "end_positions": end}

    return arrow_table(features())


def prepare_validation_features(examples: dict, tokenizer, max_length: int, doc_stride: int):
    """Batched map function: windows with their example id and context-only offset mappings (None
    elsewhere, so post-processing can never pick a question or special token)."""
    return arrow_table({**window.columns, "offset_mapping": window.offsets(), "example_id": examples["id"][window.sample]}
                       for window in question_context_windows(examples, tokenizer, max_length, doc_stride))


def features_fingerprint(dataset, prepare, tokenizer, max_length: int, doc_stride: int) -> str:
    """The fingerprint save_to_disk records in state.json, from what the features are made of.

    datasets' own hashes the tokenizer object, which carries where and how it was loaded (its path,
    local_files_only): every clone and environment would write different features."""
    from datasets.fingerprint import Hasher

    return Hasher.hash([dataset._fingerprint, prepare, tokenizer.backend_tokenizer.to_str(), tokenizer.padding_side,
                        max_length, doc_stride])


def tokenize(params, tokenizer, out_dir: Path, root: Path = Path(".")) -> dict:
    """Build and save train/validation features and the validation examples; return the stats."""
    import datasets

    train, validation = load_splits(params, root)
    max_length, stride = params["tokenize.max_length"], params["tokenize.doc_stride"]  # stride < half: validate
    train_ds = datasets.Dataset.from_list(train)
    validation_ds = datasets.Dataset.from_list(validation)
    fn_kwargs = {"tokenizer": tokenizer, "max_length": max_length, "doc_stride": stride}
    processes = params["data.num_proc"] or os.cpu_count() or 1

    # Both before either map runs: the tokenizer's JSON, hashed, carries the truncation its last call set.
    fingerprints = {prepare: features_fingerprint(dataset, prepare, tokenizer, max_length, stride)
                    for dataset, prepare in ((train_ds, prepare_train_features),
                                             (validation_ds, prepare_validation_features))}

    def features(dataset, prepare, desc):
        # A process is slow to start (it imports the tokenizer's libraries): worth it only for a few thousand
        # questions each.
        num_proc = min(processes, len(dataset) // MIN_EXAMPLES_PER_PROCESS)
        return dataset.map(prepare, batched=True, remove_columns=dataset.column_names, fn_kwargs=fn_kwargs,
                           num_proc=num_proc if num_proc > 1 else None, desc=desc,
                           new_fingerprint=fingerprints[prepare])

    train_features = features(train_ds, prepare_train_features, "train features")
    validation_features = features(validation_ds, prepare_validation_features, "validation features")
    train_features.save_to_disk(str(out_dir / "train"))
    validation_features.save_to_disk(str(out_dir / "validation"))
    validation_ds.save_to_disk(str(out_dir / "validation_examples"))

    answerable = sum(1 for s in train_features["start_positions"] if s > 0)
    return {
        "train_examples": len(train_ds),
        "train_features": len(train_features),
        "train_features_answer_cut_off": len(train_features) - answerable,
        "validation_examples": len(validation_ds),
        "validation_features": len(validation_features),
        "validation_examples_overflowing": sum(
            1 for n in Counter(validation_features["example_id"]).values() if n > 1),
        "max_length": max_length,
        "doc_stride": stride,
    }

