"""benchmarks/compare_methods.py's reading of `dvc exp show --json`: which experiments count, which
one per combination, and the table of their evaluate reports."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import compare_methods  # noqa: E402


REPORTS = {}  # experiment commit -> its reports/evaluate.json, as compare_methods.evaluation reads it


def shown_exp(name, timestamp, method, distill, epochs, sparse_f1, seed=42, dense_f1=50.0):
    REPORTS[f"sha-{name}"] = {variant: {"f1": f1, "exact_match": f1 - 10} for variant, f1 in
                              (("dense", dense_f1), ("pruned", 30.0), ("sparse", sparse_f1))}
    params = {"seed": seed, "prune": {"method": method}, "finetune": {"distill": distill, "epochs": epochs}}
    return {"rev": f"sha-{name}", "name": name, "data": {
        "timestamp": timestamp, "params": {"params.yaml": {"data": params}},
        "outs": {compare_methods.REPORT: {"hash": "md5"}}}}


def table_of(chosen) -> list[list[str]]:
    return cells(compare_methods.markdown_table(compare_methods.with_scores(chosen, REPORTS.__getitem__)))


def cells(markdown: str) -> list[list[str]]:
    """The markdown table's rows (header included, separator line left out) as stripped cells."""
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in markdown.splitlines() if not set(line) <= set("|:- ")]


def test_running_experiment_is_skipped_and_newest_setting_wins():
    shown = [{"rev": "workspace", "experiments": None}, {"rev": "abc", "experiments": [{"revs": [
        # still running: no timestamp yet
        shown_exp("running", None, "sparsegpt", False, 8, 47.0),
        {**shown_exp("no-report", "2026-11-27T00:00:00", "sparsegpt", True, 8, 47.0), "data": {
            "timestamp": "2026-11-27T00:00:00", "outs": {}}},  # made before evaluate wrote a report
        shown_exp("new-sgpt-kd", "2026-11-26T05:09:25", "sparsegpt", True, 8, 47.0),
        shown_exp("old-sgpt-kd", "2026-11-25T10:00:00", "sparsegpt", True, 2, 45.0),
        shown_exp("old-wanda", "2026-11-25T09:00:00", "wanda", False, 2, 42.0),
    ]}]}]
    found = compare_methods.experiments(shown)
    assert [e["name"] for e in found] == ["new-sgpt-kd", "old-sgpt-kd", "old-wanda"]
    assert found[0]["rev"] == "sha-new-sgpt-kd"
    assert found[0]["params"] == {"seed": 42, "prune.method": "sparsegpt", "finetune.distill": True,
                                  "finetune.epochs": 8}
    chosen = compare_methods.select(found, [])
    assert {key: [e["name"] for e in runs] for key, runs in chosen.items()} == {("sparsegpt", True): ["new-sgpt-kd"]}
    older = compare_methods.select(found, ["finetune.epochs=2"])
    assert {key: [e["name"] for e in runs] for key, runs in older.items()} == {
        ("sparsegpt", True): ["old-sgpt-kd"], ("wanda", False): ["old-wanda"]}
    table = table_of(older)
    assert len(table) == 1 + 6
    assert table[0][:3] == ["prune.method", "finetune.distill", "dense F1"]
    assert table[1][:3] == ["magnitude", "false", "not run"]
    assert ["wanda", "false", "50.00", "40.00", "30.00", "20.00", "42.00", "32.00", "-8.00", "old-wanda"] in table
    assert ["sparsegpt", "true", "50.00", "40.00", "30.00", "20.00", "45.00", "35.00", "-5.00", "old-sgpt-kd"] in table


def test_seeds_are_averaged_only_when_asked_for():
    shown = [{"rev": "abc", "experiments": [{"revs": [
        shown_exp("s1", "2026-11-26T03:00:00", "sparsegpt", True, 8, 47.0, seed=1, dense_f1=48.0),
        shown_exp("s2", "2026-11-26T02:00:00", "sparsegpt", True, 8, 44.0, seed=2, dense_f1=46.0),
        shown_exp("s2-older", "2026-11-26T01:00:00", "sparsegpt", True, 8, 10.0, seed=2),
        shown_exp("s3-other-epochs", "2026-11-26T00:30:00", "sparsegpt", True, 2, 10.0, seed=3),
        shown_exp("s9", "2026-11-26T00:00:00", "sparsegpt", True, 8, 10.0, seed=9),
    ]}]}]
    found = compare_methods.experiments(shown)
    # without --seeds the seed is part of the setting: only the newest experiment's seed counts
    assert [e["name"] for e in compare_methods.select(found, [])[("sparsegpt", True)]] == ["s1"]
    # with them: the newest experiment of each listed seed, under the same setting otherwise
    runs = compare_methods.select(found, [], seeds=[1, 2, 3])[("sparsegpt", True)]
    assert [e["name"] for e in runs] == ["s1", "s2"]
    row = next(row for row in table_of({("sparsegpt", True): runs})
               if row[:2] == ["sparsegpt", "true"])
    # dense (48 + 46) / 2, sparse (47 + 44) / 2; gaps -1 and -2: mean -1.5, se 0.5
    assert row == ["sparsegpt", "true", "47.00", "37.00", "30.00", "20.00", "45.50", "35.50", "-1.50 (se 0.50)", "s1, s2"]


def test_run_experiments_passes_each_seed(monkeypatch):
    calls = []
    monkeypatch.setattr(compare_methods, "dvc", lambda *args, capture=False: calls.append(args))
    compare_methods.run_experiments(["data.source=json"], [1, 2])
    assert len(calls) == 2 * len(compare_methods.METHODS) * len(compare_methods.DISTILL)
    assert calls[0] == ("exp", "run", "-S", "data.source=json", "-S", "prune.method=magnitude",
                        "-S", "finetune.distill=false", "-S", "seed=1", "evaluate")
    assert calls[-1][-3:] == ("-S", "seed=2", "evaluate")
    calls.clear()
    compare_methods.run_experiments([], None)
    assert not any("seed=" in flag for call in calls for flag in call)
