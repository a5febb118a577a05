"""tokenize: read SQuAD-format data, split it, and turn it into model features.

Pre-processing follows Hugging Face's run_qa.py: question/context pairs, truncation of the
context only, overflowing windows with a doc stride, offset mappings and example ids for
validation, answer start/end token positions for training ((0, 0) when the window cuts the
answer off). Unlike the seed tutorial, the end of the context is found explicitly, so a span
is never labelled inside the padding or the question.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import random
from collections import Counter
from pathlib import Path

from engine.spans import context_offsets

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
        raise StageError(f"data.source=squad: cannot load 'squad' from the hub: {str(err).splitlines()[0]}") from None
    return [dict(e) for e in squad["train"]], [dict(e) for e in squad["validation"]]


# --------------------------------------------------------------------------- features
def _tokenize_pairs(examples: dict, tokenizer, max_length: int, doc_stride: int):
    question_first = tokenizer.padding_side == "right"
    questions = [q.lstrip() for q in examples["question"]]
    # Every window holds the whole question: it must leave more than doc_stride tokens of context.
    room = max_length - doc_stride - tokenizer.num_special_tokens_to_add(pair=True)
    for qid, ids in zip(examples["id"], tokenizer(questions, add_special_tokens=False)["input_ids"]):
        if len(ids) >= room:
            raise StageError(f"question {qid!r} is {len(ids)} tokens: too long for tokenize.max_length={max_length} "
                             f"with doc_stride={doc_stride} (a question may take at most {room - 1})")
    return tokenizer(
        questions if question_first else examples["context"],
        examples["context"] if question_first else questions,
        truncation="only_second" if question_first else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    ), (1 if question_first else 0)


def context_span(sequence_ids: list, context_id: int) -> tuple[int, int]:
    """First and last token index of the context in one feature."""
    start = sequence_ids.index(context_id)
    end = len(sequence_ids) - 1 - sequence_ids[::-1].index(context_id)
    return start, end


def answer_chars(text: str, start: int) -> tuple[int, int]:
    """The answer's character span without the whitespace at either end, which no token covers."""
    leading = len(text) - len(text.lstrip())
    return start + leading, start + len(text.rstrip())


def prepare_train_features(examples: dict, tokenizer, max_length: int, doc_stride: int) -> dict:
    """Batched map function: one feature per window, labelled with the answer's token span."""
    enc, context_id = _tokenize_pairs(examples, tokenizer, max_length, doc_stride)
    sample_map = enc.pop("overflow_to_sample_mapping")
    offsets_all = enc.pop("offset_mapping")
    starts, ends = [], []
    for i, token_offsets in enumerate(offsets_all):
        sample = sample_map[i]
        answers = examples["answers"][sample]
        start_char, end_char = answer_chars(answers["text"][0], answers["answer_start"][0])
        sequence_ids = enc.sequence_ids(i)
        offsets = context_offsets(token_offsets, sequence_ids, context_id, examples["context"][sample])
        context_start, context_end = context_span(sequence_ids, context_id)
        if offsets[context_start][0] > start_char or offsets[context_end][1] < end_char:
            starts.append(0)  # the answer is not (wholly) inside this window: point at [CLS]
            ends.append(0)
            continue
        # The tightest token span around the answer's characters: the first token that ends after
        # its start, the last that starts before its end.
        token_start = context_start
        while offsets[token_start][1] <= start_char:
            token_start += 1
        token_end = context_end
        while offsets[token_end][0] >= end_char:
            token_end -= 1
        if token_start > token_end:  # no token covers any of the answer's characters
            token_start = token_end = 0
        starts.append(token_start)
        ends.append(token_end)
    enc["start_positions"] = starts
    enc["end_positions"] = ends
    return enc


def prepare_validation_features(examples: dict, tokenizer, max_length: int, doc_stride: int) -> dict:
    """Batched map function: windows with their example id and context-only offset mappings."""
    enc, context_id = _tokenize_pairs(examples, tokenizer, max_length, doc_stride)
    sample_map = enc.pop("overflow_to_sample_mapping")
    enc["example_id"] = [examples["id"][s] for s in sample_map]
    # Offsets of non-context tokens become None, so post-processing can never pick them.
    enc["offset_mapping"] = [
        context_offsets(offsets, enc.sequence_ids(i), context_id, examples["context"][sample_map[i]])
        for i, offsets in enumerate(enc["offset_mapping"])
    ]
    return enc


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
    max_length, stride = params["tokenize.max_length"], params["tokenize.doc_stride"]
    if stride >= max_length // 2:
        raise StageError(f"params.yaml: tokenize.doc_stride={stride} must be < max_length/2 ({max_length // 2})")
    train_ds = datasets.Dataset.from_list(train)
    validation_ds = datasets.Dataset.from_list(validation)
    fn_kwargs = {"tokenizer": tokenizer, "max_length": max_length, "doc_stride": stride}
    processes = params["data.num_proc"] or os.cpu_count() or 1

    def features(dataset, prepare, desc):
        # A process is slow to start (it imports the tokenizer's libraries): worth it only for a few thousand
        # questions each.
        num_proc = min(processes, len(dataset) // MIN_EXAMPLES_PER_PROCESS)
        return dataset.map(prepare, batched=True, remove_columns=dataset.column_names, fn_kwargs=fn_kwargs,
                           num_proc=num_proc if num_proc > 1 else None, desc=desc,
                           new_fingerprint=features_fingerprint(dataset, prepare, tokenizer, max_length, stride))

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

