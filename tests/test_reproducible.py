"""Same inputs, same bytes: a stage's outputs do not depend on where the repository or the model
lives, nor on HF_HUB_OFFLINE, so a fresh clone's `dvc repro` leaves dvc.lock as committed."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from conftest import tiny_params
from engine.models import load_qa_model, load_tokenizer
from stages.common import atomic_dir
from stages.modeling import save_model
from stages.params import validate
from stages.tokenize import tokenize


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture
def two_clones(tiny_model, tmp_path, monkeypatch):
    """Run `make(model, out_dir)` as two clones would: the model at two paths, the first loaded
    offline (HF_HUB_OFFLINE=1), the second online; each writes through atomic_dir (a random temporary
    name). Returns both outputs' file hashes."""
    import transformers.tokenization_utils_base as tokenization

    def run(make):
        hashes = []
        for clone, offline in (("one", True), ("two", False)):
            model = shutil.copytree(tiny_model, tmp_path / clone / "model")
            monkeypatch.setattr(tokenization, "is_offline_mode", lambda: offline)
            with atomic_dir(tmp_path / clone / "out") as out:
                make(model, out)
            hashes.append(file_hashes(tmp_path / clone / "out"))
        return hashes

    return run


def test_tokenize_writes_the_same_bytes_in_two_clones(two_clones):
    one, two = two_clones(lambda model, out: tokenize(validate(tiny_params(model)), load_tokenizer(str(model)), out))
    assert "train/state.json" in one
    assert one == two


def test_a_saved_model_is_the_same_bytes_in_two_clones(two_clones):
    one, two = two_clones(lambda model, out: save_model(load_qa_model(str(model)), load_tokenizer(str(model)), out))
    assert "tokenizer_config.json" in one
    assert one == two
