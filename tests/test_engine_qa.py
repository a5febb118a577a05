"""engine/qa.py on a CPU: answers as transformers' question-answering pipeline gave them (its span
decoder, which transformers 5 keeps in the document QA pipeline), long contexts in windows, batches,
the accelerated directory, and the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers.pipelines.document_question_answering import select_starts_ends

from conftest import REPO
from engine.models import load_qa_model, load_tokenizer
from engine.qa import QuestionAnswerer, best_spans, main
from stages import accelerate

CONTEXT = ("Ada Lovelace was born in London in 1815. She worked with Charles Babbage on the Analytical Engine, "
           "and her notes on it hold what many call the first published program.")
LONG_CONTEXT = " ".join(f"In year {1800 + k} the river near the old mill of town {k} flooded the fields."
                        for k in range(40))
QUESTIONS = ["Where was Ada born?", "Who did she work with?", "When did the river flood?"]


@pytest.fixture(scope="module")
def answerer(tiny_model):
    return QuestionAnswerer.from_dir(tiny_model, "cpu", batch_size=2)


def pipeline_answer(model, tokenizer, question, context, max_length, doc_stride, max_answer_length):
    """(score, start, end) as the v4 pipeline found it: its windows, its p_mask (the question and
    special tokens masked, [CLS] not), select_starts_ends per window, the best score over windows."""
    windows = tokenizer(question, context, truncation="only_second", max_length=max_length, stride=doc_stride,
                        return_overflowing_tokens=True, return_offsets_mapping=True)
    found = []
    for window, offsets in enumerate(windows["offset_mapping"]):
        input_ids = np.array(windows["input_ids"][window])
        p_mask = np.array([sequence_id != 1 for sequence_id in windows.sequence_ids(window)], dtype=int)
        p_mask[input_ids == tokenizer.cls_token_id] = 0
        with torch.no_grad():
            output = model(**{name: torch.tensor([windows[name][window]])
                              for name in ("input_ids", "attention_mask", "token_type_ids")})
        starts, ends, scores, _ = select_starts_ends(output.start_logits.numpy(), output.end_logits.numpy(), p_mask,
                                                     np.array(windows["attention_mask"][window]),
                                                     max_answer_len=max_answer_length)
        found += [(float(score), offsets[s][0], offsets[e][1]) for s, e, score in zip(starts, ends, scores)]
    return max(found), len(windows["input_ids"])


@pytest.mark.parametrize("question, context, max_length, doc_stride", [
    (QUESTIONS[0], CONTEXT, 384, 128),  # one window
    (QUESTIONS[2], LONG_CONTEXT, 64, 16),  # many windows
    ("  Who?", LONG_CONTEXT, 48, 8),
])
def test_answers_agree_with_the_pipelines_span_decoder(answerer, tiny_model, question, context, max_length,
                                                       doc_stride):
    model, tokenizer = load_qa_model(str(tiny_model)).eval(), load_tokenizer(str(tiny_model))
    (score, start, end), windows = pipeline_answer(model, tokenizer, question.lstrip(), context, max_length,
                                                   doc_stride, 15)
    answer = answerer(question, context, max_answer_length=15, doc_stride=doc_stride, max_length=max_length)
    assert (answer["start"], answer["end"]) == (start, end)
    assert answer["answer"] == context[start:end] and 0 <= start < end <= len(context)
    assert answer["score"] == pytest.approx(score, rel=1e-4)
    if context is LONG_CONTEXT:
        assert windows >= 5


def test_the_best_span_of_any_window_wins_with_its_character_offsets(tiny_model):
    """A model that points at the one token "telescope", which only the last windows hold."""
    tokenizer = load_tokenizer(str(tiny_model))
    target = tokenizer.convert_tokens_to_ids("telescope")

    def pointing_model(input_ids, **inputs):
        logits = 10.0 * (input_ids == target).float()
        return SimpleNamespace(start_logits=logits, end_logits=logits)

    context = LONG_CONTEXT + " Then she bought a telescope."
    answer = QuestionAnswerer(pointing_model, tokenizer, torch.device("cpu"))("What did she buy?", context,
                                                                             max_length=48, doc_stride=8)
    assert answer["answer"] == "telescope" and answer["start"] == context.index("telescope")
    assert answer["score"] > 0.99


def test_top_k_gives_distinct_spans_best_first(answerer):
    answers = answerer(QUESTIONS[2], LONG_CONTEXT, top_k=5, max_length=64, doc_stride=16)
    assert len(answers) == 5
    assert len({(a["start"], a["end"]) for a in answers}) == 5
    assert [a["score"] for a in answers] == sorted((a["score"] for a in answers), reverse=True)
    assert all(a["answer"] == LONG_CONTEXT[a["start"]:a["end"]] for a in answers)


def test_best_spans_are_the_top_valid_spans():
    generator = np.random.default_rng(0)
    offsets = [None] * 3 + [(4 * k, 4 * k + 3) for k in range(12)] + [None]
    start, end = generator.normal(size=(2, len(offsets) + 4))  # logits past the offsets are padding
    valid = sorted((start[s] + end[e], s, e) for s in range(len(offsets)) for e in range(len(offsets))
                   if offsets[s] and offsets[e] and s <= e < s + 4)[::-1]
    found = best_spans(start, end, offsets, n_best=len(offsets), max_answer_length=4, top_k=6)
    assert found == [(pytest.approx(score), offsets[s][0], offsets[e][1]) for score, s, e in valid[:6]]


def test_many_questions_at_once_answer_as_one_at_a_time(answerer):
    one_by_one = [answerer(question, LONG_CONTEXT, max_length=64, doc_stride=16) for question in QUESTIONS]
    together = answerer(QUESTIONS, LONG_CONTEXT, max_length=64, doc_stride=16)  # windows in batches of 2
    for single, batched in zip(one_by_one, together):
        assert (single["start"], single["end"]) == (batched["start"], batched["end"])
        assert single["score"] == pytest.approx(batched["score"], rel=1e-4)
    assert answerer(QUESTIONS[:2], [CONTEXT, LONG_CONTEXT])[1]["answer"] in LONG_CONTEXT
    with pytest.raises(ValueError, match="2 questions and 3 contexts"):
        answerer(QUESTIONS[:2], [CONTEXT] * 3)


def test_the_accelerated_directory_answers_as_its_model(params, tiny_model, tmp_path, answerer):
    out = tmp_path / "accelerated"
    out.mkdir()
    accelerate.run(params, tiny_model, out)  # on a CPU: a dense plan
    accelerated = QuestionAnswerer.from_dir(out, "cpu")
    for question in QUESTIONS:
        expected, found = answerer(question, CONTEXT), accelerated(question, CONTEXT)
        assert (found["start"], found["end"]) == (expected["start"], expected["end"])


def test_cli_prints_the_answer_as_json(tiny_model, tmp_path, capsys):
    context_file = tmp_path / "context.txt"
    context_file.write_text(CONTEXT)
    assert main(["--model", str(tiny_model), "--question", QUESTIONS[0], "--context-file", str(context_file)]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert set(answer) == {"answer", "score", "start", "end"}
    assert answer["answer"] == CONTEXT[answer["start"]:answer["end"]]
    assert main(["--model", str(tiny_model), "--question", QUESTIONS[0], "--context", CONTEXT, "--top-k", "3"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    assert exit.value.code == 0 and "--context-file" in capsys.readouterr().out


def test_cli_says_in_one_line_when_the_model_is_missing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "engine.qa", "--model", str(tmp_path / "nowhere"),
                             "--question", "Who?", "--context", CONTEXT], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'nowhere'}: no model there (no config.json); "
                                                  "the pipeline writes models/accelerated (dvc repro), or name "
                                                  "another model directory"]


def test_asking_for_a_gpu_where_there_is_none_is_one_clear_error(tiny_model, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    assert main(["--model", str(tiny_model), "--question", "Who?", "--context", CONTEXT, "--device", "cuda"]) == 1
    assert capsys.readouterr().err.startswith("error: device cuda: no CUDA device here")


def test_a_device_torch_does_not_know_is_one_line(tiny_model, capsys):
    assert main(["--model", str(tiny_model), "--question", "Who?", "--context", CONTEXT, "--device", "gpu"]) == 1
    assert capsys.readouterr().err == "error: device 'gpu': not a device torch knows (cuda, cpu, cuda:1, ...)\n"


@pytest.mark.parametrize("word", ["café", "cafe\u0301", "Malmö", "Malmo\u0308", "नमस्ते", "مُحَمَّدٌ"])
def test_combining_marks_come_back_whole_from_engine_qa(tiny_model, word):
    """A model that points at the word's tokens: the answer keeps the marks after its last letter."""
    tokenizer = load_tokenizer(str(tiny_model))
    context = f"They met at {word}"
    word_ids = set(tokenizer(word, add_special_tokens=False)["input_ids"])

    def pointing_model(input_ids, **inputs):
        [row] = input_ids.tolist()
        positions = [k for k, token in enumerate(row) if token in word_ids]
        start, end = torch.zeros(1, len(row)), torch.zeros(1, len(row))
        start[0, positions[0]] = end[0, positions[-1]] = 10.0  # the word's first and last token
        return SimpleNamespace(start_logits=start, end_logits=end)

    answer = QuestionAnswerer(pointing_model, tokenizer, torch.device("cpu"))("When?", context, max_answer_length=30)
    assert answer["answer"] == word and answer["end"] == len(context)


def cli_error(tiny_model, capsys, *extra: str) -> str:
    """engine.qa's one line on stderr for these arguments (exit status 1, nothing on stdout)."""
    assert main(["--model", str(tiny_model), "--context", CONTEXT, *extra]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err


@pytest.mark.parametrize("question", ["", "   "])
def test_engine_qa_empty_question_is_rejected(tiny_model, capsys, answerer, question):
    assert "a question is empty" in cli_error(tiny_model, capsys, "--question", question)
    with pytest.raises(ValueError, match="a question is empty"):
        answerer([QUESTIONS[0], question], CONTEXT)


def test_engine_qa_max_length_past_the_models_positions_is_one_line(tiny_model, capsys):
    err = cli_error(tiny_model, capsys, "--question", QUESTIONS[0], "--max-length", "1024")
    assert "error: max_length=1024 is longer than the model takes (bert: 512 positions" in err


@pytest.mark.parametrize("option", ["--top-k", "--max-answer-length"])
def test_engine_qa_top_k_and_max_answer_length_0_are_rejected(tiny_model, capsys, answerer, option):
    with pytest.raises(SystemExit) as exit:
        main(["--model", str(tiny_model), "--question", QUESTIONS[0], "--context", CONTEXT, option, "0"])
    assert exit.value.code == 2 and f"argument {option}: 0 is not at least 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="must be at least 1"):
        answerer(QUESTIONS[0], CONTEXT, **{option.lstrip("-").replace("-", "_"): 0})
