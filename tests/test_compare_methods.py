"""benchmarks/compare_methods.py's reading of `dvc exp show --json`: which experiments count, which
one per combination, and the table."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import compare_methods  # noqa: E402


def shown_exp(name, timestamp, method, distill, epochs, sparse_f1):
    scores = {variant: {"f1": f1, "exact_match": f1 - 10} for variant, f1 in
              (("dense", 50.0), ("pruned", 30.0), ("sparse", sparse_f1))}
    params = {"prune": {"method": method}, "finetune": {"distill": distill, "epochs": epochs}}
    return {"rev": name, "name": name, "data": {
        "timestamp": timestamp, "params": {"params.yaml": {"data": params}},
        "metrics": {"metrics/evaluate.json": {"data": scores}}}}


def test_running_experiment_is_skipped_and_newest_setting_wins():
    shown = [{"rev": "workspace", "experiments": None}, {"rev": "abc", "experiments": [{"revs": [
        # still running: no timestamp, and its metrics are the workspace's (the last experiment's)
        shown_exp("running", None, "sparsegpt", False, 8, 47.0),
        shown_exp("new-sgpt-kd", "2026-11-26T05:09:25", "sparsegpt", True, 8, 47.0),
        shown_exp("old-sgpt-kd", "2026-11-25T10:00:00", "sparsegpt", True, 2, 45.0),
        shown_exp("old-wanda", "2026-11-25T09:00:00", "wanda", False, 2, 42.0),
    ]}]}]
    found = compare_methods.experiments(shown)
    assert [e["name"] for e in found] == ["new-sgpt-kd", "old-sgpt-kd", "old-wanda"]
    assert found[0]["params"] == {"prune.method": "sparsegpt", "finetune.distill": True, "finetune.epochs": 8}
    chosen = compare_methods.select(found, [])
    assert {key: exp["name"] for key, exp in chosen.items()} == {("sparsegpt", True): "new-sgpt-kd"}
    older = compare_methods.select(found, ["finetune.epochs=2"])
    assert {key: exp["name"] for key, exp in older.items()} == {("sparsegpt", True): "old-sgpt-kd",
                                                                ("wanda", False): "old-wanda"}
    table = compare_methods.markdown_table(older).splitlines()
    assert len(table) == 2 + 6
    assert table[2].startswith("| magnitude | false | not run |")
    assert "| wanda | false | 50.00 | 40.00 | 30.00 | 20.00 | 42.00 | 32.00 | -8.00 | old-wanda |" in table
    assert "| sparsegpt | true | 50.00 | 40.00 | 30.00 | 20.00 | 45.00 | 35.00 | -5.00 | old-sgpt-kd |" in table
