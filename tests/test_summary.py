"""The summary stage: the scores file, the headline speedup, and the three charts drawn from the reports."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from stages import charts, summary
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
    "noise": {"untrustworthy": {}, "untrusted_figures": {}},
    "device": {"device": "cuda", "gpu": "NVIDIA H200"},
}
LOSSES = {"dense baseline": {"objective": "cross-entropy of start and end",
                             "history": [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}]},
          "2:4 fine-tuning": {"objective": "distillation, 0.9 T\u00b2 KL + 0.1 cross-entropy (T = 2)",
                              "history": [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.9}]}}
DATA = "squad/dev-v1.1.json.gz, 10570 questions"
# A CPU run: the accelerated model is the dense one; bs2's accelerated timing flagged as noisy.
CPU_BENCHMARK = {
    "seq_length": 128, "dtype": "float32", "modes": ["eager"],
    "latency_ms": {"bs1": {"dense_eager": 10.0, "accelerated_eager": 9.8},
                   "bs2": {"dense_eager": 20.0, "accelerated_eager": 4.0}},
    "speedup": {"bs1": {"eager": 1.02}, "bs2": {"eager": 5.0}},
    "noise": {"untrustworthy": {"bs2": {"accelerated_eager": "repeats spread 83% (IQR / median) > 20%"}},
              "untrusted_figures": {}},
    "device": {"device": "cpu"},
}


def test_headline_speedup_is_the_largest_batch_size_measured_compiled_first():
    assert summary.headline_speedup(BENCHMARK) == {"batch_size": 64, "mode": "compiled", "speedup": 1.459}
    eager_only = {"speedup": {"bs1": {"eager": 0.9}, "bs4": {"eager": 1.1}},
                  "noise": {"untrustworthy": {}, "untrusted_figures": {}}}
    assert summary.headline_speedup(eager_only) == {"batch_size": 4, "mode": "eager", "speedup": 1.1}
    assert summary.headline_speedup({**eager_only, "speedup": {"bs4": {}}}) is None


def test_headline_speedup_leaves_out_timings_too_noisy_to_trust():
    noisy = {"bs64": {"accelerated_compiled": "repeats spread 83% (IQR / median) > 20%"}}
    benchmark = {**BENCHMARK, "noise": {"untrustworthy": noisy, "untrusted_figures": {}}}
    assert summary.headline_speedup(benchmark) == {"batch_size": 64, "mode": "graphed", "speedup": 1.447}
    on_a_busy_cpu = {"speedup": {"bs1": {"eager": 0.015}, "bs2": {"eager": 106.571}},
                     "noise": {"untrustworthy": {"bs2": {"dense_eager": "repeats spread 83% (IQR / median) > 20%"},
                                                 "bs1": {"accelerated_eager": "a single timed call"}},
                               "untrusted_figures": {}}}
    assert summary.headline_speedup(on_a_busy_cpu) is None


def test_a_speedup_whose_interval_is_too_wide_is_never_quoted():
    wide = {"bs64": {"speedup compiled": "x1.459 [1.200, 1.700] (not a result: ...)"}}
    benchmark = {**BENCHMARK, "noise": {"untrustworthy": {}, "untrusted_figures": wide}}
    assert summary.headline_speedup(benchmark) == {"batch_size": 64, "mode": "graphed", "speedup": 1.447}
    scores = summary.accelerated_scores(EVALUATION, benchmark)
    assert scores["latency"]["bs64"] == {"ms": 7.6, "dense_ms": 11.0, "speedup": 1.447, "mode": "graphed",
                                         "trusted": True}
    every_mode = {"bs64": {f"speedup {mode}": "wide" for mode in ("eager", "compiled", "graphed")}}
    benchmark = {**BENCHMARK, "noise": {"untrustworthy": {}, "untrusted_figures": every_mode}}
    assert summary.accelerated_scores(EVALUATION, benchmark)["latency"]["bs64"]["trusted"] is False
    assert summary.headline_speedup(benchmark) == {"batch_size": 16, "mode": "compiled", "speedup": 1.04}


def test_latency_panels_per_mode_leave_out_batch_sizes_that_did_not_run():
    panels = summary.latency_panels(BENCHMARK)
    assert list(panels) == ["eager", "compiled", "graphed"]
    assert panels["compiled"] == {"dense": [(16, 2.6), (64, 10.8)], "accelerated": [(16, 2.5), (64, 7.4)],
                                  "dense fp8": [(16, 2.4), (64, 8.0)]}
    assert list(panels["eager"]) == ["dense", "accelerated"]


def test_summarize_writes_the_scores_and_three_charts(tmp_path):
    result = summary.summarize(EVALUATION, BENCHMARK, LOSSES, DATA, tmp_path / "plots", tmp_path / "metrics/scores.json")
    scores = {"f1": {"dense": 60.768, "pruned": 54.148, "sparse": 57.806, "accelerated": 57.9},
              "em": {"dense": 57.25, "pruned": 50.5, "sparse": 53.25, "accelerated": 53.5},
              "speedup": 1.459,
              "accelerated": {"f1": 57.9, "em": 53.5, "f1_change": -2.868, "latency": {
                  "bs16": {"ms": 2.5, "dense_ms": 2.6, "speedup": 1.04, "mode": "compiled", "trusted": True},
                  "bs64": {"ms": 7.4, "dense_ms": 10.8, "speedup": 1.459, "mode": "compiled", "trusted": True}}}}
    assert json.loads((tmp_path / "metrics/scores.json").read_text()) == scores
    assert result == {"scores": scores, "headline_speedup": {"batch_size": 64, "mode": "compiled", "speedup": 1.459}}
    drawn = {name: ET.parse(tmp_path / "plots" / f"{name}.svg").getroot() for name in ("loss", "latency", "f1")}
    labels = {name: {t.text for t in root.iter(f"{SVG}text")} for name, root in drawn.items()}
    assert {"optimizer step", "training loss (each run's own objective)", "dense baseline", "2:4 fine-tuning",
            "dense baseline: cross-entropy of start and end",
            "2:4 fine-tuning: distillation, 0.9 T\u00b2 KL + 0.1 cross-entropy (T = 2)"} <= labels["loss"]
    assert {"batch size (sequences, log scale)", "latency per forward (ms, log scale)", "eager", "compiled",
            "graphed", "16", "64"} <= labels["latency"]
    assert "256" not in labels["latency"]
    assert any("NVIDIA H200" in label and "float16" in label for label in labels["latency"])
    assert not any("hollow" in label for label in labels["latency"])  # nothing flagged, nothing said
    assert {"F1 (%)", "57.9", "54.148", f"F1 per variant, {DATA}"} <= labels["f1"]
    assert not any("SQuAD" in label for label in labels["f1"] | labels["latency"])
    assert float(drawn["f1"].get("width")) >= len(f"F1 per variant, {DATA}") * charts.TITLE_CHAR  # the title fits
    assert [bar.get("data-series") for bar in drawn["f1"].iter(f"{SVG}rect") if bar.get("data-series")] == [
        "dense", "pruned", "sparse", "accelerated"]


def test_the_loss_panels_each_have_their_own_scale():
    """Cross-entropy near 5 and a distillation loss near 1 are not drawn on one axis."""
    root = ET.fromstring(summary.loss_chart(LOSSES))
    labels = [t.text for t in root.iter(f"{SVG}text")]
    assert {"dense baseline", "2:4 fine-tuning"} <= set(labels)
    heights = {line.get("data-series"): [float(xy.split(",")[1]) for xy in line.get("points").split()]
               for line in root.iter(f"{SVG}polyline")}
    dense, sparse = heights.values()
    # each starts at its own panel's top tick (5 and 1); on one axis 0.1 of loss would be 5 px, here 26
    assert dense[0] == sparse[0] == charts.TOP and sparse[1] - sparse[0] == 0.1 * charts.PANEL_HEIGHT


def test_on_a_cpu_the_speedup_is_not_a_number_and_noisy_timings_are_hollow(tmp_path):
    result = summary.summarize(EVALUATION, CPU_BENCHMARK, LOSSES, DATA, tmp_path / "plots", tmp_path / "scores.json")
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["speedup"] == summary.NO_KERNELS == "n/a (no 2:4 kernels on CPU)" and result["headline_speedup"] is None
    assert scores["accelerated"]["latency"] == {
        "bs1": {"ms": 9.8, "dense_ms": 10.0, "speedup": summary.NO_KERNELS, "mode": "eager", "trusted": True},
        "bs2": {"ms": 4.0, "dense_ms": 20.0, "speedup": summary.NO_KERNELS, "mode": "eager", "trusted": False}}
    latency = ET.parse(tmp_path / "plots/latency.svg").getroot()
    hollow = [c for c in latency.iter(f"{SVG}circle") if c.get("fill") == "#ffffff"]
    assert len(hollow) == 1 and len(list(latency.iter(f"{SVG}circle"))) == 4
    [note] = [t.text for t in latency.iter(f"{SVG}text") if "hollow" in t.text]
    assert "1 timing(s) the benchmark flagged as noisy" in note and "no 2:4 kernels" in note


def test_data_name_says_which_data_the_scores_are_on():
    def params(**data):
        return {"data.source": "files", "data.dir": "data/embedded", "data.train_files": ["biographies.json"],
                "data.validation_files": [], "data.validation_fraction": 0.2, **data}
    assert summary.data_name(params(), 400) == "data/embedded/biographies.json (20% held out by article), 400 questions"
    assert summary.data_name(params(**{"data.validation_files": ["dev.json.gz"]}), 9) == (
        "data/embedded/dev.json.gz, 9 questions")
    assert summary.data_name(params(**{"data.source": "squad"}), 10570) == "SQuAD v1.1 validation (hub), 10570 questions"


def test_a_run_with_nothing_to_draw_fails_in_one_line_before_writing(tmp_path):
    with pytest.raises(StageError, match="no loss logged for 2:4 fine-tuning"):
        summary.summarize(EVALUATION, BENCHMARK, {**LOSSES, "2:4 fine-tuning": {"objective": "x", "history": []}},
                          DATA, tmp_path, tmp_path / "scores.json")
    all_out_of_memory = {**BENCHMARK, "latency_ms": {"bs16": {"error": "out of memory"}}, "speedup": {"bs16": {}}}
    with pytest.raises(StageError, match="no latency at any batch size"):
        summary.summarize(EVALUATION, all_out_of_memory, LOSSES, DATA, tmp_path, tmp_path / "scores.json")
    assert list(tmp_path.iterdir()) == []
