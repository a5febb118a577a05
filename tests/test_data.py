"""The embedded data set: reproducible from its generator and valid SQuAD v1.1."""
from __future__ import annotations

import importlib.util
import json
import re

from conftest import REPO
from conftest import EMBEDDED_DATA
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
