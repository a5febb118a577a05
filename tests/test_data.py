"""The data: the embedded set (reproducible from its generator, valid SQuAD v1.1) and, where the
development machines hold them, the official SQuAD files."""
from __future__ import annotations

import importlib.util
import json
import re

import pytest

from conftest import EMBEDDED_DATA, REPO, SHARED_DATA
from stages.common import StageError
from stages.tokenize import read_squad_json


def load_generator():
    spec = importlib.util.spec_from_file_location("make_embedded", REPO / "data" / "make_embedded.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_file_is_what_the_generator_makes():
    generated = json.dumps(load_generator().build(), indent=1, ensure_ascii=False) + "\n"
    assert EMBEDDED_DATA.read_text() == generated


def test_embedded_data_is_valid_and_large_enough():
    examples = read_squad_json(EMBEDDED_DATA)  # checks every answer_start against its text
    assert len(examples) >= 4000
    assert len({e["title"] for e in examples}) == 200
    # two people per paragraph: each question names one of them
    by_context = {}
    for e in examples:
        by_context.setdefault(e["context"], set()).update(re.findall(r"[A-Z][a-z]+ [A-Z][a-z]+", e["question"]))
    assert all(len(names) == 2 for names in by_context.values())




@pytest.mark.skipif(not (SHARED_DATA / "squad-v1.1").is_dir(), reason="official SQuAD files not on this machine")
def test_official_squad_reads_whole_and_xquad_ids_collide_with_dev():
    from stages.tokenize import read_squad_files

    squad = SHARED_DATA / "squad-v1.1"
    train, dev = read_squad_files([squad / "train-v1.1.json.gz"], [squad / "dev-v1.1.json.gz"])
    # the counts its PROVENANCE.md gives
    assert len(train) == 87_599 and len(dev) == 10_570
    assert sum(len(e["answers"]["text"]) for e in dev) == 34_726 and len({e["title"] for e in dev}) == 48
    # XQuAD-en is a subset of dev: scoring both together would merge questions, so it is refused
    with pytest.raises(StageError, match="ids must be unique across all data files"):
        read_squad_files([squad / "dev-v1.1.json.gz"], [SHARED_DATA / "xquad-en" / "xquad.en.json"])
