"""A training run whose loss or weights stop being finite fails instead of saving a NaN model."""
from __future__ import annotations

import pytest

from conftest import REPO
from engine.models import load_tokenizer
from stages.common import StageError
from stages.tokenize import tokenize
from stages.train_baseline import train_baseline


def test_diverging_training_fails_naming_the_step(params, tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its checkpoints, left by the failed run, stay there
    features, out = tmp_path / "features", tmp_path / "out"
    features.mkdir()
    out.mkdir()
    tokenize(params, load_tokenizer(str(tiny_model)), features, root=REPO)
    params["train"]["learning_rate"] = 1e30  # finite, so it passes validation, and diverges at once
    with pytest.raises(StageError, match=r"not finite at step \d+ \(learning_rate too high\?\)"):
        train_baseline(params, features, out)
    assert not (out / "model.safetensors").exists()
