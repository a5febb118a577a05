"""Shared fixtures: a tiny random BERT (real architecture, real tokenizer) and tiny params."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parent.parent


def make_tiny_model(path: Path, hidden: int = 64, layers: int = 2, intermediate: int = 128) -> Path:
    """A randomly initialised BERT QA model with the embedded model's real tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    from stages.modeling import resolve_model_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("embedded"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=intermediate, max_position_embeddings=512)
    import torch

    torch.manual_seed(0)
    BertForQuestionAnswering(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def tiny_params(model: Path | str) -> dict:
    """params.yaml with every knob turned down to seconds of CPU work."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"]["name"] = str(model)
    params["data"].update(max_train_examples=48, max_validation_examples=24)
    params["tokenize"].update(max_length=64, doc_stride=16)
    params["train"].update(max_steps=3, batch_size=8, eval_batch_size=8)
    params["finetune"].update(max_steps=2, batch_size=8)
    params["evaluate"]["batch_size"] = 16
    params["benchmark"].update(cpu_batch_sizes=[1, 2], cpu_seq_length=32, warmup=1, repeats=2, compile=False)
    return params


@pytest.fixture
def params(tiny_model):
    from stages.params import validate

    return validate(tiny_params(tiny_model))
