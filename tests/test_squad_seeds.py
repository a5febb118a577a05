"""benchmarks/squad_seeds.py: its -S overrides and the paired summary it prints."""
from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from squad_seeds import built, logged, parse_overrides, summary, with_overrides  # noqa: E402


def test_overrides_read_as_yaml_into_the_params():
    raw = with_overrides({"train": {"epochs": 1}, "data": {"train_files": []}},
                         parse_overrides(["train.epochs=1.5", "data.train_files=[a.json.gz]"]))
    assert raw == {"train": {"epochs": 1.5}, "data": {"train_files": ["a.json.gz"]}}
    with pytest.raises(SystemExit, match="expected key=value"):
        parse_overrides(["train.epochs"])


def test_summary_pairs_each_seed_with_its_own_dense_baseline(tmp_path):
    rows = [{"tokenize": "dev", "train_examples": 4}]
    for seed, dense, sparse in ((1, 80.0, 79.0), (2, 84.0, 82.0), (3, 82.0, 82.0)):
        rows += [{"seed": seed, "variant": "dense", "on": "dev", "f1": dense, "exact_match": 70.0},
                 {"seed": seed, "variant": "sparse", "on": "dev", "f1": sparse, "exact_match": 69.0}]
    results = tmp_path / "results.jsonl"
    results.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    # gaps -1, -2, 0: mean -1, sd 1, se 1/sqrt(3)
    assert summary(results).splitlines()[-1] == "sparse - dense on dev: -1.00 F1 (se 0.58, 3 paired seeds)"


def test_summary_of_the_committed_h200_run():
    text = summary(REPO / "docs" / "results" / "2026-12-01-squad-seeds-h200.jsonl")
    assert "sparse - dense on dev: -1.29 F1 (se 0.16, 3 paired seeds)" in text
    assert "sparse - dense on extra: -0.57 F1 (se 0.17, 3 paired seeds)" in text


def test_summary_of_the_committed_resumable_h200_run():
    text = summary(REPO / "docs" / "results" / "2026-12-01-squad-2.5-epochs-h200.jsonl")
    assert "sparse - dense on dev: -0.91 F1 (se 0.14, 3 paired seeds)" in text
    assert "int8 - sparse on dev: -0.07 F1 (se 0.01, 3 paired seeds)" in text


def test_a_model_is_built_whole_or_not_at_all_and_never_twice(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp)
        (tmp / "model.safetensors").write_text("weights")

    def killed(tmp):
        (tmp / "model.safetensors").write_text("half")
        raise KeyboardInterrupt  # a time limit's signal, mid-write

    with pytest.raises(KeyboardInterrupt):
        built(tmp_path / "dense-1", killed)
    assert not (tmp_path / "dense-1").exists() and not list(tmp_path.iterdir())
    built(tmp_path / "dense-1", build)
    built(tmp_path / "dense-1", build)
    assert len(calls) == 1 and (tmp_path / "dense-1" / "model.safetensors").read_text() == "weights"


def test_scores_already_logged_are_known_by_seed_variant_and_set(tmp_path):
    results = tmp_path / "results.jsonl"
    assert logged(results) == set()
    results.write_text(json.dumps({"tokenize": "dev"}) + "\n"
                       + json.dumps({"seed": 1, "variant": "dense", "on": "dev", "f1": 80.0}) + "\n")
    assert logged(results) == {(1, "dense", "dev")}
