"""Loading a Hugging Face question-answering model and tokenizer (every failure one line), the
positions a model takes, and the Linears of its transformer body the engine works on."""
from __future__ import annotations

import os
import pickle

import torch
from safetensors import SafetensorError
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, PreTrainedModel

from .errors import InputError, first_line


def _from_pretrained(loader, source: str, what: str, **kwargs):
    try:
        return loader.from_pretrained(source, **kwargs)
    except OSError as err:
        from_hub = os.environ.get("HF_HUB_OFFLINE") == "1" and not os.path.isdir(source)
        hint = " (HF_HUB_OFFLINE=1: hub ids cannot be fetched)" if from_hub else ""
        raise InputError(f"model.name={source}: cannot load the {what}{hint}: {first_line(err)}") from None
    except SafetensorError as err:  # a truncated or corrupt weights file: bad input, not worth a retry
        raise InputError(f"{source}: cannot read the {what}'s weights ({err})") from None
    except pickle.UnpicklingError:  # torch.load(weights_only=True) refuses pickled objects other than tensors
        raise InputError(f"{source}: the {what}'s pickled weights (pytorch_model.bin) hold more than tensors, which "
                         "are not loaded (arbitrary code); save the model as safetensors") from None


def load_tokenizer(source: str):
    tokenizer = _from_pretrained(AutoTokenizer, source, "tokenizer")
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"model.name={source}: needs a fast tokenizer (offset mappings), got a slow one")
    return tokenizer


def load_qa_model(source: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A question-answering model; a plain encoder gets a freshly initialised QA head."""
    kwargs = {"dtype": dtype} if dtype is not None else {}
    return _from_pretrained(AutoModelForQuestionAnswering, source, "model", **kwargs)


# Families whose position ids start after the padding index (pad_token_id + 1): that many of
# max_position_embeddings are never used for tokens.
PADDING_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "data2vec-text")


def check_sequence_length(config, length: int, field: str) -> None:
    """An InputError unless the model has position embeddings for `length` tokens."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return
    if config.model_type in PADDING_OFFSET_POSITIONS:
        positions -= config.pad_token_id + 1
    if length > positions:
        raise InputError(f"{field}={length} is longer than the model takes ({config.model_type}: {positions} "
                         "positions, max_position_embeddings)")
