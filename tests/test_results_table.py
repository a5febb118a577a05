"""The README's results table is generated from committed files, one row per artifact."""
from __future__ import annotations

import copy
import json
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "docs"))
import results_table  # noqa: E402


def test_readme_results_table_is_the_generated_one():
    readme = (REPO / "README.md").read_text()
    assert results_table.with_table(readme) == readme, "README's results are stale: python docs/results_table.py --write"


def test_each_gpu_row_comes_from_one_runs_reports():
    for run in results_table.GPU_RUNS:
        row = results_table.gpu_row(run)
        evaluation = results_table.read(REPO / run / "evaluate.json")
        benchmark = results_table.read(REPO / run / "benchmark.json")
        assert f"{evaluation['accelerated']['f1']:.2f}" in row
        assert f"{benchmark['latency_ms']['bs256']['accelerated_compiled']:.2f} ms" in row
        assert benchmark["device"]["gpu"] in row and f"cuSPARSELt {benchmark['device']['cusparselt']}" in row


def test_the_readme_stays_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 150


def test_a_figure_shows_its_interval_and_one_too_wide_is_marked():
    steady = {"median": 1.081, "low": 1.072, "high": 1.093, "rounds": 10, "trusted": True}
    assert results_table.figure(steady) == "1.08x [1.07-1.09]"
    assert results_table.figure({**steady, "low": 0.9, "trusted": False}) == "1.08x [0.90-1.09], not a result"
    assert results_table.figure(None) == "n/a"
    with_intervals = {"speedup_interval": {"bs16": {"compiled": steady}}}
    assert results_table.speedup_cell(with_intervals, "bs16") == "1.08x [1.07-1.09]"
    # a report from before intervals: its rounds' range, marked where it reaches past ±3% of the median
    before_intervals = {"speedup": {"bs16": {"compiled": 1.08}}, "speedup_range": {"bs16": {"compiled": [1.06, 1.11]}}}
    assert results_table.speedup_cell(before_intervals, "bs16") == "1.08x (1.06-1.11)"
    before_intervals["speedup_range"]["bs16"]["compiled"] = [1.0, 1.1]
    assert results_table.speedup_cell(before_intervals, "bs16") == "1.08x (1.00-1.10), not a result"


def test_a_run_with_the_matrix_adds_a_row_per_batch_size_of_its_factors(tmp_path):
    interval = {"median": 1.25, "low": 1.24, "high": 1.26, "rounds": 10, "trusted": True}
    factors = {"bs16": {"2:4 at fp16": interval, "2:4 at 8-bit": None, "8-bit at dense": interval,
                        "8-bit at 2:4": None}}
    (tmp_path / "benchmark.json").write_text(json.dumps({"factors": factors}))
    table = results_table.factor_table([str(tmp_path)])
    cells = "1.25x [1.24-1.26] | n/a | 1.25x [1.24-1.26] | n/a"
    assert table.splitlines()[-1] == f"| [{tmp_path.name}]({tmp_path}) | 16 | {cells} |"
    assert results_table.factor_table(results_table.GPU_RUNS) is None  # the committed run predates the matrix


def test_a_shape_benchmark_is_captioned_as_random_weights_and_its_rows_come_from_its_report():
    for run in results_table.SHAPE_RUNS:
        report = results_table.read(REPO / run / "benchmark.json")
        table = results_table.shape_table(run)
        assert "not a model result" in report["model"] and report["model"] in table.splitlines()[0]
        benchmark = report["benchmark"]
        for key, speedups in benchmark["speedup_interval"].items():
            row = next(line for line in table.splitlines() if line.startswith(f"| {key.removeprefix('bs')} |"))
            cells = [cell.strip() for cell in row.strip("|").split("|")]
            assert cells[1] == results_table.figure(speedups["compiled"])
            assert cells[2] == results_table.figure(speedups["eager"])
            assert cells[3:] == [results_table.figure(benchmark["factors"][key][factor])
                                 for factor in results_table.shown_factors([benchmark])]


def test_a_matrix_timed_without_the_gelu_epilogue_model_is_captioned_as_overstating(tmp_path):
    interval = {"median": 1.5, "low": 1.49, "high": 1.51, "rounds": 10, "trusted": True}
    before = {"factors": {"bs16": {"2:4 at fp16": interval}}, "matrix": {"bs16": {"fp16 dense": {"variant": "dense"}}},
              "latency_ms": {"bs16": {"dense_compiled": 3.0, "accelerated_compiled": 2.0}}}
    (tmp_path / "before").mkdir()
    (tmp_path / "before" / "benchmark.json").write_text(json.dumps(before))
    table = results_table.factor_table([str(tmp_path / "before")])
    assert table.splitlines()[0].endswith("[its 95% interval]):")
    assert table.splitlines()[-1].startswith("- fp16 dense ran each GELU as a kernel of its own")
    assert table.splitlines()[-1].endswith("these speedups overstate what 2:4 and 8-bit buy.")
    assert table.splitlines()[2] == "| run | batch | 2:4 at fp16 |"  # only the factors the report has
    after = {"factors": {"bs16": {"2:4 at fp16": interval, "2:4 and 8-bit": interval}},
             "matrix": {"bs16": {"fp16 dense": {"variant": "dense_gelu"}, "8-bit dense": {"variant": "dense_fp8"}}},
             "latency_ms": {"bs16": {"dense_compiled": 3.0, "dense_gelu_compiled": 2.8, "accelerated_compiled": 2.0}}}
    (tmp_path / "after").mkdir()
    (tmp_path / "after" / "benchmark.json").write_text(json.dumps(after))
    table = results_table.factor_table([str(tmp_path / "after")])
    assert "overstate" not in table
    assert table.splitlines()[-1].endswith('"2:4 at 8-bit" counts that fusion as 2:4\'s.')  # 8-bit dense: GELU apart
    assert "8-bit dense ran GELU" not in results_table.factor_table([str(tmp_path / "before")])
    assert table.splitlines()[2] == "| run | batch | 2:4 and 8-bit | 2:4 at fp16 |"
    fused = copy.deepcopy(after)  # 8-bit dense given cuBLASLt's fp8 epilogue: nothing left to caption
    fused["latency_ms"]["bs16"]["dense_fp8_epilogue_compiled"] = 2.4
    fused["matrix"]["bs16"]["8-bit dense"]["variant"] = "dense_fp8_epilogue"
    (tmp_path / "fused").mkdir()
    (tmp_path / "fused" / "benchmark.json").write_text(json.dumps(fused))
    assert results_table.factor_table([str(tmp_path / "fused")]).splitlines()[-1].startswith("| [fused](")  # no caveat
