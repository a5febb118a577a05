"""What the engine and the pipeline built on it share: atomic file writes, the default device and the
relative error every numeric check uses."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import InputError


def mode_after_umask(mode: int) -> int:
    """`mode` less the umask, as open() and mkdir() would make it: mkstemp and mkdtemp make files
    private (0600, 0700), which hides the outputs from the other users of a shared checkout."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def write_text(path: str | Path, text: str, before_replace: Callable[[], None] | None = None) -> None:
    """Write a text file atomically (temp file + rename); `before_replace` may still refuse to publish
    it by raising, and then nothing is written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), mode_after_umask(0o666))
            f.write(text)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj, before_replace: Callable[[], None] | None = None) -> None:
    """Write JSON atomically; nothing is written if `obj` does not serialise."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n", before_replace)


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def best_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def chosen_device(device: str | torch.device | None) -> torch.device:
    """The device asked for (None: best_device()), or an InputError in one line where torch knows no such
    device or this machine has no CUDA."""
    try:
        device = torch.device(device) if device is not None else best_device()
    except RuntimeError as err:  # torch's message lists every device type torch knows, over several lines
        raise InputError(f"device {device!r}: not a device torch knows (cuda, cpu, cuda:1, ...)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device}: no CUDA device here (torch {torch.__version__}); use cpu")
    return device


def relative_error(reference: torch.Tensor, output: torch.Tensor) -> float:
    """||output - reference|| / ||reference|| (Frobenius), in float32."""
    return float((output.float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-12))
