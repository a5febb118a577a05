"""validate: params.yaml and the data files it names, checked before any stage runs.

DVC removes a stage's outputs just before it runs the stage, so a bad value found by the stage
itself would cost the outputs it was about to replace. This stage runs first, reads every field
of params.yaml (all of it is its DVC dependency) and fails, having removed nothing, on a bad value,
an unknown key, a model.name that names no model here, a missing data file or a precision this machine
cannot run. Its stamp is the same bytes whatever valid params it checked: every other stage depends on
it, to run after it, and is never made stale by it. Imports neither torch nor another stage, so a check
takes well under a second (torch only when bf16 or fp16 training is asked for, to ask the GPU).
"""
from __future__ import annotations

from pathlib import Path

from .data_files import data_files
from .hardware import precision_error
from .model_source import resolve_model_source
from .params import ParamError, Params

STAMP = {"checked": "params.yaml (every field) and the data files it names"}


def check_data(params: Params, root: Path = Path("."), source: str = "params.yaml") -> None:
    """data.dir is a folder holding every file data.train_files and data.validation_files name."""
    if params["data.source"] != "files":
        return
    directory = root / params["data.dir"]
    if not directory.is_dir():
        raise ParamError(f"{source}: data.dir {params['data.dir']!r}: no such folder")
    if not params["data.train_files"]:
        raise ParamError(f"{source}: data.train_files is empty: no data to train on")
    for field in ("data.train_files", "data.validation_files"):
        for name, path in zip(params[field], data_files(params, field, root, source)):
            if not path.is_file():
                raise ParamError(f"{source}: {field} entry {name!r}: no such file in {params['data.dir']}")


def check_precision(params: Params, source: str = "params.yaml") -> None:
    """Each training section's precision runs on this machine."""
    asked = {section: params[f"{section}.precision"] for section in ("train", "finetune")}
    if not set(asked.values()) & {"bf16", "fp16"}:
        return
    import torch

    cuda = torch.cuda.is_available()
    for section, precision in asked.items():
        if error := precision_error(precision, f"{section}.precision", cuda, cuda and torch.cuda.is_bf16_supported()):
            raise ParamError(f"{source}: {error}")


def check_model(params: Params, source: str = "params.yaml") -> None:
    """model.name is the embedded model, a local model directory, or a hub id this machine can load:
    with HF_HUB_OFFLINE, one in the hub's cache (a typo'd id would otherwise pass, and fail only in
    tokenize, after DVC removed its outputs). Online, a hub id is taken on trust: asking the hub is
    the stages' work."""
    name = params["model.name"]
    try:
        where = resolve_model_source(name)
    except ParamError as err:
        raise ParamError(f"{source}: {err}") from None
    if where != name or Path(name).expanduser().exists():
        return
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise ParamError(f"{source}: model.name={name}: no such local directory, and not a hub id in this machine's "
                         "hub cache (HF_HUB_OFFLINE=1: hub ids cannot be fetched)")


def validate_inputs(params: Params, root: Path = Path("."), source: str = "params.yaml") -> dict:
    """Fail with one line (ParamError) on a model, data or precision `params` cannot be run with; the stamp."""
    check_model(params, source)
    check_data(params, root, source)
    check_precision(params, source)
    return STAMP
