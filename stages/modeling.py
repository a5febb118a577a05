"""How the pipeline's models are saved (stages/model_source.py: where they come from; engine.models loads
them)."""
from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel

from engine.common import mode_after_umask


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
