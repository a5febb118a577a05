"""The GPU run's benchmark scripts on a CPU: the variable-shape stream (benchmarks/engine_stream.py),
question-answering latency (benchmarks/engine_qa_latency.py) and the tokenizer gpu_engine.py gives its
model, on a tiny model and a dense plan (what accelerate makes without a GPU)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import engine_qa_latency  # noqa: E402
import engine_stream  # noqa: E402
from stages import accelerate  # noqa: E402


@pytest.fixture(scope="module")
def work(tiny_model, tmp_path_factory):
    """gpu_engine.py --work's layout: dense/ and accelerated/ (with its plan)."""
    from conftest import tiny_params
    from stages.params import validate

    root = tmp_path_factory.mktemp("work")
    shutil.copytree(tiny_model, root / "dense")
    (root / "accelerated").mkdir()
    accelerate.run(validate(tiny_params(tiny_model)), tiny_model, root / "accelerated")
    return root


def test_requests_are_seeded_and_inside_their_ranges():
    shapes = engine_stream.requests(200, seed=3, max_batch=256, min_seq=64, max_seq=384)
    assert shapes == engine_stream.requests(200, seed=3) and shapes != engine_stream.requests(200, seed=4)
    assert all(1 <= batch <= 256 and 64 <= seq <= 384 for batch, seq in shapes)
    assert min(b for b, _ in shapes) < 32 and max(b for b, _ in shapes) > 224  # the range is used


def test_the_stream_pads_to_buckets_without_changing_outputs_and_reports_the_speedup(work, tmp_path):
    out = tmp_path / "stream.json"
    engine_stream.main(["--work", str(work), "--out", str(out), "--requests", "5", "--seed", "1", "--passes", "2",
                        "--max-batch", "5", "--min-seq", "8", "--max-seq", "30", "--batch-buckets", "2", "4",
                        "--seq-buckets", "16", "32", "--no-compile"])
    result = json.loads(out.read_text())
    shapes = [tuple(shape) for shape in result["request_shapes"]]
    assert shapes == engine_stream.requests(5, 1, 5, 8, 30)
    assert result["tokens"] == sum(batch * seq for batch, seq in shapes)
    assert len(result["seconds"]["dense"]) == 2 and result["speedup"] > 0
    assert result["speedup"] == round(result["tokens_per_s"]["accelerated"] / result["tokens_per_s"]["dense"], 3)
    assert len(result["relative_error"]) == engine_stream.CHECKED_REQUESTS
    for errors in result["relative_error"].values():
        assert errors["padding"] < 1e-5  # padded and masked: the unpadded model's logits
        assert errors["accelerated_vs_dense"] < 1e-5  # a dense plan on a CPU: the same model


def test_qa_latency_times_both_answerers_on_the_same_questions(work, tmp_path):
    out = tmp_path / "qa.json"
    engine_qa_latency.main(["--work", str(work), "--out", str(out), "--questions", "2", "--repeats", "2"])
    result = json.loads(out.read_text())
    assert len(result["questions"]) == 2
    for name in ("accelerated", "dense"):
        assert len(result[name]["median_ms"]) == 2 and result[name]["all_questions_in_one_call_ms"] > 0
    assert result["accelerated"]["answers"] == result["dense"]["answers"]  # a dense plan answers as its model


def test_gpu_engine_gives_its_model_a_tokenizer_that_needs_no_hub(tmp_path):
    from gpu_engine import save_tokenizer
    from transformers import AutoTokenizer

    save_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    encoded = tokenizer("Where was Ada born?", "Ada was born in London, 1815.")["input_ids"]
    assert tokenizer.unk_token_id not in encoded and max(encoded) < 200  # ids inside any BERT vocabulary
    assert tokenizer.decode(encoded, skip_special_tokens=True).replace(" ", "").replace("#", "") == \
        "WherewasAdaborn?AdawasborninLondon,1815."
