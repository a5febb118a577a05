"""The README's results table is generated from committed files, one row per artifact."""
from __future__ import annotations

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
