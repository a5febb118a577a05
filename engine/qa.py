"""Answering questions with a model directory, the accelerated one (models/accelerated) or any
question-answering model: question + context in, the answer's text, character span and score out,
as transformers' question-answering pipeline did (removed in transformers 5).

    answerer = QuestionAnswerer.from_dir("models/accelerated")
    answerer("Where was Ada born?", "Ada was born in London in 1815.")
    # {"answer": "London", "score": 0.93, "start": 16, "end": 22}

    python -m engine.qa --model models/accelerated --question "..." --context "..."   (or --context-file)

A context longer than one window is read in overlapping windows (doc_stride tokens shared) and the
best span over all of them wins. The score is the pipeline's: the span's start probability times its
end probability, each a softmax over its window's context tokens and [CLS]. The span selection
(best_spans) is the one evaluate scores the model with.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .runtime import load_cusparselt

load_cusparselt()  # `python -m engine.qa` starts here: $TWOFOUR_CUSPARSELT before torch is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from .common import chosen_device  # noqa: E402
from .errors import InputError  # noqa: E402
from .models import check_sequence_length, load_qa_model, load_tokenizer  # noqa: E402
from .spans import context_offsets  # noqa: E402

NO_ANSWER = {"answer": "", "score": 0.0, "start": 0, "end": 0}  # no span fits (an empty context)


def best_spans(start_logits, end_logits, offsets, n_best: int, max_answer_length: int,
               top_k: int = 1) -> list[tuple[float, int, int]]:
    """The top_k valid spans of one window as (start + end logit, start_char, end_char), best first:
    start and end among the n_best highest logits, both on tokens with offsets (the context), the
    end not before the start, at most max_answer_length tokens. Logits past the offsets (padding)
    are ignored."""
    length = len(offsets)
    start_logits, end_logits = np.asarray(start_logits)[:length], np.asarray(end_logits)[:length]
    starts = np.argsort(start_logits)[::-1][:n_best]
    ends = np.argsort(end_logits)[::-1][:n_best]
    in_context = np.array([offset is not None for offset in offsets])
    scores = start_logits[starts][:, None] + end_logits[ends][None, :]
    span_tokens = ends[None, :] - starts[:, None] + 1
    valid = (in_context[starts][:, None] & in_context[ends][None, :]
             & (span_tokens >= 1) & (span_tokens <= max_answer_length))
    order = np.argsort(-scores, axis=None, kind="stable")  # ties in the order the n_best lists give
    rows, columns = np.unravel_index(order[valid.ravel()[order]][:top_k], scores.shape)
    return [(float(scores[row, column]), offsets[starts[row]][0], offsets[ends[column]][1])
            for row, column in zip(rows, columns)]


def best_span(start_logits, end_logits, offsets, n_best: int, max_answer_length: int):
    """(score, start_char, end_char) of the best valid span in one window, or None."""
    spans = best_spans(start_logits, end_logits, offsets, n_best, max_answer_length)
    return spans[0] if spans else None


def _logsumexp(logits: np.ndarray, allowed: np.ndarray) -> float:
    """log(sum(exp(logits))) over the allowed tokens: the log of their softmax's denominator."""
    allowed_logits = logits[allowed].astype(np.float64)
    peak = allowed_logits.max()
    return float(peak + np.log(np.exp(allowed_logits - peak).sum()))


class QuestionAnswerer:
    """A question-answering model and its tokenizer: call it with a question and a context (or lists
    of them) for the answer. Windows of all questions run through the model batch_size at a time; the
    accelerated model on a GPU pads each batch up to a captured CUDA graph (graphs.BucketedRunner)."""

    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device, batch_size: int = 32):
        self.model, self.tokenizer, self.device, self.batch_size = model, tokenizer, device, batch_size

    @classmethod
    def from_dir(cls, model_dir: str | Path, device: str | torch.device | None = None,
                 batch_size: int = 32) -> QuestionAnswerer:
        """The model in model_dir: with its plan applied where the accelerate stage left one
        (plan.load_accelerated: 2:4 kernels and CUDA graphs on a GPU, the plain model elsewhere),
        else as a plain question-answering model. device None: the GPU if there is one."""
        from .plan import PLAN_FILE, load_accelerated  # the GPU engine only where a plan asks for it

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise InputError(f"{model_dir}: no model there (no config.json); the pipeline writes models/accelerated "
                             "(dvc repro), or name another model directory")
        device = chosen_device(device)
        if (model_dir / PLAN_FILE).is_file():
            model = load_accelerated(model_dir, device)
        else:
            model = load_qa_model(str(model_dir)).to(device).eval()
        return cls(model, load_tokenizer(str(model_dir)), device, batch_size)

    def __call__(self, question: str | list[str], context: str | list[str], top_k: int = 1,
                 max_answer_length: int = 30, doc_stride: int = 128, max_length: int = 384):
        """The best answer {"answer", "score", "start", "end"} (start/end: character offsets into the
        context), or with top_k > 1 a list of up to top_k distinct spans, best first. Lists of
        questions (one context, or one per question) give a list of those."""
        questions = [question] if isinstance(question, str) else list(question)
        contexts = [context] if isinstance(context, str) else list(context)
        if any(not q.strip() for q in questions):
            raise ValueError("a question is empty: ask something")
        for name, value in (("top_k", top_k), ("max_answer_length", max_answer_length)):
            if value < 1:
                raise ValueError(f"{name}={value}: must be at least 1")
        if (config := getattr(self.model, "config", None)) is not None:
            check_sequence_length(config, max_length, "max_length")
        if len(contexts) == 1:
            contexts *= len(questions)
        if len(contexts) != len(questions):
            raise ValueError(f"{len(questions)} questions and {len(contexts)} contexts: give one context, or one each")
        windows, context_id = self._windows(questions, contexts, doc_stride, max_length)
        start_logits, end_logits = self._logits(windows)
        candidates = [{} for _ in questions]  # per question: (start, end) -> best score over windows
        for window, sample in enumerate(windows["overflow_to_sample_mapping"]):
            sequence_ids, input_ids = windows.sequence_ids(window), windows["input_ids"][window]
            offsets = context_offsets(windows["offset_mapping"][window], sequence_ids, context_id, contexts[sample])
            # The softmax runs over the context and [CLS] (where a model puts "no answer"), as the pipeline's did.
            allowed = np.array([offset is not None or token == self.tokenizer.cls_token_id
                                for offset, token in zip(offsets, input_ids)])
            start, end = start_logits[window][:len(offsets)], end_logits[window][:len(offsets)]
            normalizer = _logsumexp(start, allowed) + _logsumexp(end, allowed)
            found = candidates[sample]
            for logit_sum, start_char, end_char in best_spans(start, end, offsets, len(offsets), max_answer_length,
                                                              top_k):
                span = (start_char, end_char)
                found[span] = max(float(np.exp(logit_sum - normalizer)), found.get(span, 0.0))
        answers = []
        for text, spans in zip(contexts, candidates):
            ranked = [{"answer": text[start:end], "score": score, "start": start, "end": end}
                      for (start, end), score in sorted(spans.items(), key=lambda item: -item[1])[:top_k]]
            answers.append(ranked if top_k > 1 else (ranked[0] if ranked else dict(NO_ANSWER)))
        return answers[0] if isinstance(question, str) else answers

    def _windows(self, questions: list[str], contexts: list[str], doc_stride: int, max_length: int):
        """Every question/context pair in windows of max_length tokens, the context overlapping by
        doc_stride between windows; and which sequence of a window the context is."""
        question_first = self.tokenizer.padding_side == "right"
        questions = [question.lstrip() for question in questions]  # leading spaces can fill a window
        room = max_length - doc_stride - self.tokenizer.num_special_tokens_to_add(pair=True)
        longest = max(len(ids) for ids in self.tokenizer(questions, add_special_tokens=False)["input_ids"])
        if longest >= room:
            raise ValueError(f"a question of {longest} tokens leaves no room for the context with "
                             f"max_length={max_length}, doc_stride={doc_stride}: at most {room - 1}")
        first, second = (questions, contexts) if question_first else (contexts, questions)
        windows = self.tokenizer(first, second, truncation="only_second" if question_first else "only_first",
                                 max_length=max_length, stride=doc_stride, return_overflowing_tokens=True,
                                 return_offsets_mapping=True)
        return windows, 1 if question_first else 0

    @torch.inference_mode()
    def _logits(self, windows) -> tuple[list[np.ndarray], list[np.ndarray]]:
        names = [name for name in self.tokenizer.model_input_names if name in windows]
        starts, ends = [], []
        for begin in range(0, len(windows["input_ids"]), self.batch_size):
            batch = self.tokenizer.pad({name: windows[name][begin:begin + self.batch_size] for name in names},
                                       return_tensors="pt")
            output = self.model(**{name: tensor.to(self.device) for name, tensor in batch.items()})
            starts.extend(output.start_logits.float().cpu().numpy())
            ends.extend(output.end_logits.float().cpu().numpy())
        return starts, ends


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.qa",
        description="Answer a question about a text with a question-answering model directory; prints the "
                    "answer, its character span in the context and its score as JSON.")
    parser.add_argument("--model", type=Path, default=Path("models/accelerated"),
                        help="model directory (default: the pipeline's models/accelerated)")
    parser.add_argument("--question", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--context", help="the text to find the answer in")
    source.add_argument("--context-file", type=Path, help="a UTF-8 file holding the text")
    parser.add_argument("--top-k", type=positive_int, default=1, help="how many answers (default 1)")
    parser.add_argument("--max-answer-length", type=positive_int, default=30, help="in tokens (default 30)")
    parser.add_argument("--max-length", type=positive_int, default=384, help="tokens per window (default 384)")
    parser.add_argument("--doc-stride", type=positive_int, default=128, help="tokens windows share (default 128)")
    parser.add_argument("--device", help="cuda, cpu, ... (default: the GPU if there is one)")
    args = parser.parse_args(argv)
    transformers_logging.disable_progress_bar()  # stderr keeps to errors: the answer is the output
    try:
        context = args.context if args.context is not None else _read_text(args.context_file)
        answerer = QuestionAnswerer.from_dir(args.model, args.device)
        answer = answerer(args.question, context, top_k=args.top_k, max_answer_length=args.max_answer_length,
                          doc_stride=args.doc_stride, max_length=args.max_length)
    except (InputError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(answer, ensure_ascii=False, indent=2))
    return 0


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (0 would silently answer nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None


if __name__ == "__main__":
    sys.exit(main())
