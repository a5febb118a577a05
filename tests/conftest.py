"""Shared fixtures: a tiny random BERT (real architecture, real tokenizer; RoBERTa and DistilBERT on
request) and tiny params."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"  # the development machines' copy of the official files
EMBEDDED_DATA = REPO / "data" / "embedded" / "biographies.json"
GIT = ["git", "-c", "user.email=ci@twofour", "-c", "user.name=ci"]  # commits in the tiny projects


def tiny_qa_model(family: str, vocab_size: int, hidden: int, layers: int, intermediate: int, heads: int = 4):
    """A randomly initialised question-answering model of one family the engine has an adapter for
    (bert, roberta, distilbert: DistilBERT names its sizes apart), seeded."""
    import torch
    from transformers import (
        BertConfig,
        BertForQuestionAnswering,
        DistilBertConfig,
        DistilBertForQuestionAnswering,
        RobertaConfig,
        RobertaForQuestionAnswering,
    )

    if family == "distilbert":
        config = DistilBertConfig(vocab_size=vocab_size, dim=hidden, n_layers=layers, n_heads=heads,
                                  hidden_dim=intermediate, max_position_embeddings=512)
        model_class = DistilBertForQuestionAnswering
    else:
        config_class, model_class = {"bert": (BertConfig, BertForQuestionAnswering),
                                     "roberta": (RobertaConfig, RobertaForQuestionAnswering)}[family]
        config = config_class(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                              num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=512)
    torch.manual_seed(0)
    return model_class(config)


def make_tiny_model(path: Path, hidden: int = 64, layers: int = 2, intermediate: int = 128,
                    family: str = "bert") -> Path:
    """A randomly initialised QA model (BERT unless `family` says) with the embedded model's real tokenizer."""
    from transformers import AutoTokenizer

    from stages.model_source import resolve_model_source

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("embedded"))
    tiny_qa_model(family, tokenizer.vocab_size, hidden, layers, intermediate).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def saved_masks(model_dir: Path) -> dict:
    """The 2:4 masks a saved pruned model carries in its zeros, as finetune_sparse reads them."""
    from engine.adapters import encoder_linears
    from engine.models import load_qa_model
    from pruning.masks import masks_in_weights

    return masks_in_weights(encoder_linears(load_qa_model(str(model_dir))), zeros_per_block=2)


@pytest.fixture(autouse=True)
def own_checkpoints(tmp_path, monkeypatch):
    """Training run in a test's own process checkpoints under its own folder: not the checkout's
    .checkpoints (a killed `dvc repro` resumes from there) and not beside another test's, run at once by
    another worker (a stage removes the checkpoints of every other configuration it finds)."""
    import stages.training

    monkeypatch.setattr(stages.training, "CHECKPOINTS", tmp_path / ".checkpoints")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def tiny_params(model: Path | str) -> dict:
    """params.yaml with every knob turned down to seconds of CPU work."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"].update(name=str(model), watch=str(model))
    params["data"].update(max_train_examples=48, max_validation_examples=24)
    params["tokenize"].update(max_length=64, doc_stride=16)
    params["train"].update(max_steps=3, batch_size=8, eval_batch_size=8)
    params["finetune"].update(max_steps=2, batch_size=8)
    params["evaluate"]["batch_size"] = 16
    params["benchmark"].update(cpu_batch_sizes=[1, 2], cpu_seq_length=32, warmup=1, repeats=2, compile=False)
    return params


@pytest.fixture
def params(tiny_model):
    """Unit tests' params: magnitude pruning (needs no calibration features) and plain fine-tuning;
    a test of SparseGPT or distillation says so. The end-to-end projects keep params.yaml's recipe."""
    from stages.params import validate

    raw = tiny_params(tiny_model)
    raw["prune"]["method"] = "magnitude"
    raw["finetune"].update(distill=False, distill_hidden=0.0)
    return validate(raw)


def sh(args, cwd, env, check=True):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def project_env(root: Path, extra_env: dict | None = None) -> dict:
    """The environment the tiny project in `root` runs in: offline, its own Prefect home."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PREFECT_HOME=str(root / ".prefect-home"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("PREFECT_API_URL", None)  # Prefect's ephemeral mode, as on a fresh machine
    env.update(extra_env or {})
    return env


def make_project(root: Path, extra_env: dict | None = None) -> tuple[Path, dict]:
    """A git + DVC copy of the repository in `root`, params turned down to a tiny model and data."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    make_tiny_model(root / "tiny-model")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params("tiny-model"), sort_keys=False))
    env = project_env(root, extra_env)
    with open(root / ".gitignore", "a") as gitignore:
        gitignore.write("/tiny-model/\n/.prefect-home/\n")
    sh(["git", "init", "-q"], root, env)
    sh(GIT + ["add", "-A"], root, env)
    sh(GIT + ["commit", "-qm", "tiny"], root, env)
    return root, env


@pytest.fixture(scope="session")
def pruned_project(tmp_path_factory) -> Path:
    """A tiny project reproduced up to prune and committed, made once: copy it (copy_project) to use it."""
    root, env = make_project(tmp_path_factory.mktemp("pruned-project"))
    sh([sys.executable, "-m", "dvc", "repro", "prune"], root, env)
    sh(GIT + ["add", "-A"], root, env)
    sh(GIT + ["commit", "-qm", "up to prune"], root, env)
    return root


def copy_project(template: Path, root: Path, extra_env: dict | None = None) -> tuple[Path, dict]:
    """A copy of a tiny project (git history, DVC cache and run cache, outputs) that runs on its own."""
    shutil.copytree(template, root, symlinks=True, ignore=shutil.ignore_patterns(".prefect-home"))
    return root, project_env(root, extra_env)


@pytest.fixture(scope="session")
def features(tiny_model, tmp_path_factory):
    """The tiny run's tokenized features (train, validation), made once."""
    from engine.models import load_tokenizer
    from stages.params import validate
    from stages.tokenize import tokenize

    out = tmp_path_factory.mktemp("features")
    tokenize(validate(tiny_params(tiny_model)), load_tokenizer(str(tiny_model)), out)
    return out
