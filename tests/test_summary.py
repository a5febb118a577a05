"""The summary stage: the scores file, the headline speedup, and the three charts drawn from the reports."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from stages import summary
from stages.common import StageError

SVG = "{http://www.w3.org/2000/svg}"

EVALUATION = {"dense": {"exact_match": 57.25, "f1": 60.768}, "pruned": {"exact_match": 50.5, "f1": 54.148},
              "sparse": {"exact_match": 53.25, "f1": 57.806}, "accelerated": {"exact_match": 53.5, "f1": 57.9},
              "run": {"device": "cuda", "wall_s": 52.0}}
# A GPU run: fp8 dense compiled only, batch 256 out of memory.
BENCHMARK = {
    "seq_length": 384, "dtype": "float16", "modes": ["eager", "compiled", "graphed"],
    "latency_ms": {
        "bs16": {"dense_eager": 9.0, "accelerated_eager": 12.0, "dense_compiled": 2.6, "accelerated_compiled": 2.5,
                 "dense_fp8_compiled": 2.4, "dense_graphed": 2.7, "accelerated_graphed": 2.6},
        "bs64": {"dense_eager": 20.0, "accelerated_eager": 30.0, "dense_compiled": 10.8, "accelerated_compiled": 7.4,
                 "dense_fp8_compiled": 8.0, "dense_graphed": 11.0, "accelerated_graphed": 7.6},
        "bs256": {"error": "out of memory"},
    },
    "speedup": {"bs16": {"eager": 0.75, "compiled": 1.04, "graphed": 1.038}, "bs64": {"eager": 0.667, "compiled": 1.459,
                                                                                      "graphed": 1.447}, "bs256": {}},
    "noise": {"untrustworthy": {}},
    "device": {"device": "cuda", "gpu": "NVIDIA H200"},
}
LOSSES = {"dense baseline": [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}],
          "2:4 fine-tuning": [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9}]}


def test_headline_speedup_is_the_largest_batch_size_measured_compiled_first():
    assert summary.headline_speedup(BENCHMARK) == {"batch_size": 64, "mode": "compiled", "speedup": 1.459}
    eager_only = {"speedup": {"bs1": {"eager": 0.9}, "bs4": {"eager": 1.1}}, "noise": {"untrustworthy": {}}}
    assert summary.headline_speedup(eager_only) == {"batch_size": 4, "mode": "eager", "speedup": 1.1}
    assert summary.headline_speedup({**eager_only, "speedup": {"bs4": {}}}) is None


def test_headline_speedup_leaves_out_timings_too_noisy_to_trust():
    noisy = {"bs64": {"accelerated_compiled": "repeats spread 83% (IQR / median) > 20%"}}
    benchmark = {**BENCHMARK, "noise": {"untrustworthy": noisy}}
    assert summary.headline_speedup(benchmark) == {"batch_size": 64, "mode": "graphed", "speedup": 1.447}
    on_a_busy_cpu = {"speedup": {"bs1": {"eager": 0.015}, "bs2": {"eager": 106.571}},
                     "noise": {"untrustworthy": {"bs2": {"dense_eager": "repeats spread 83% (IQR / median) > 20%"},
                                                 "bs1": {"accelerated_eager": "a single timed call"}}}}
    assert summary.headline_speedup(on_a_busy_cpu) is None


def test_latency_panels_per_mode_leave_out_batch_sizes_that_did_not_run():
    panels = summary.latency_panels(BENCHMARK)
    assert list(panels) == ["eager", "compiled", "graphed"]
    assert panels["compiled"] == {"dense": [(16, 2.6), (64, 10.8)], "accelerated": [(16, 2.5), (64, 7.4)],
                                  "dense fp8": [(16, 2.4), (64, 8.0)]}
    assert list(panels["eager"]) == ["dense", "accelerated"]


def test_summarize_writes_the_scores_and_three_charts(tmp_path):
    result = summary.summarize(EVALUATION, BENCHMARK, LOSSES, tmp_path / "plots", tmp_path / "metrics/scores.json")
    scores = {"f1": {"dense": 60.768, "pruned": 54.148, "sparse": 57.806, "accelerated": 57.9}, "speedup": 1.459}
    assert json.loads((tmp_path / "metrics/scores.json").read_text()) == scores
    assert result == {"scores": scores, "headline_speedup": {"batch_size": 64, "mode": "compiled", "speedup": 1.459}}
    drawn = {name: ET.parse(tmp_path / "plots" / f"{name}.svg").getroot() for name in ("loss", "latency", "f1")}
    labels = {name: {t.text for t in root.iter(f"{SVG}text")} for name, root in drawn.items()}
    assert {"optimizer step", "training loss (unitless)", "dense baseline", "2:4 fine-tuning"} <= labels["loss"]
    assert {"batch size (sequences, log scale)", "latency per forward (ms, log scale)", "eager", "compiled",
            "graphed", "16", "64"} <= labels["latency"]
    assert "256" not in labels["latency"]
    assert any("NVIDIA H200" in label and "float16" in label for label in labels["latency"])
    assert {"F1 (%)", "57.9", "54.148"} <= labels["f1"]
    assert [bar.get("data-series") for bar in drawn["f1"].iter(f"{SVG}rect") if bar.get("data-series")] == [
        "dense", "pruned", "sparse", "accelerated"]


def test_a_run_with_nothing_to_draw_fails_in_one_line_before_writing(tmp_path):
    with pytest.raises(StageError, match="no loss logged for 2:4 fine-tuning"):
        summary.summarize(EVALUATION, BENCHMARK, {**LOSSES, "2:4 fine-tuning": []}, tmp_path, tmp_path / "scores.json")
    all_out_of_memory = {**BENCHMARK, "latency_ms": {"bs16": {"error": "out of memory"}}, "speedup": {"bs16": {}}}
    with pytest.raises(StageError, match="no latency at any batch size"):
        summary.summarize(EVALUATION, all_out_of_memory, LOSSES, tmp_path, tmp_path / "scores.json")
    assert list(tmp_path.iterdir()) == []
