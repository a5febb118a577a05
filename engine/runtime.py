"""Which cuSPARSELt the process runs: the library file EngineConfig.cusparselt names (default
$TWOFOUR_CUSPARSELT), loaded before torch loads its own, and the version actually loaded, read from the library itself.

torch 2.11 links cuSPARSELt 0.8; 0.10 (PyPI nvidia-cusparselt-cu13) has many more kernel configs and a
working kernel search, so the tuner has faster fp16 2:4 kernels to pick from. Both carry the soname
libcusparseLt.so.0, and the dynamic linker gives torch whichever object of that soname the process
already holds, so loading the named file first (RTLD_GLOBAL) is all it takes, as LD_PRELOAD would.
torch.backends.cusparselt.version() reports the version torch was compiled against whatever is loaded,
so the version recorded is cusparseLtGetProperty's, which needs no handle and no GPU.

This module imports no torch, so the places where the engine starts call load_cusparselt() before
anything imports torch: the accelerate, evaluate and benchmark flows, `python -m engine.qa`, the kernel
timing children (engine/tuning.py) and the benchmarks.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

from .config import CUSPARSELT_ENV, EngineConfig

SONAME = "libcusparseLt.so.0"
_MAJOR, _MINOR, _PATCH = 0, 1, 2  # libraryPropertyType


class CusparseLtError(RuntimeError):
    """The library TWOFOUR_CUSPARSELT names cannot be used; the message is one line naming it."""


def mapped_libraries(name_part: str, maps: Path = Path("/proc/self/maps")) -> list[str]:
    """The library files whose name holds `name_part` that this process has loaded (real paths, in load
    order)."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:  # not Linux
        return []
    found = []
    for line in lines:
        fields = line.split(maxsplit=5)  # address perms offset device inode [path]
        path = fields[5] if len(fields) == 6 else ""
        if name_part in Path(path).name and path not in found:
            found.append(path)
    return found


def mapped_cusparselt(maps: Path = Path("/proc/self/maps")) -> list[str]:
    """The cuSPARSELt library files this process has loaded (real paths, in load order)."""
    return mapped_libraries("libcusparseLt", maps)


def load_cusparselt(path: str | None = None) -> str | None:
    """Load the cuSPARSELt library file `path` (default: EngineConfig.from_env()'s) for the whole process, so
    that torch's kernels run on it; the real path loaded, or None when none is named. Call it before
    torch is imported; loading the same file again does nothing."""
    path = path or EngineConfig.from_env().cusparselt
    if not path:
        return None
    library = Path(path).expanduser()
    if not library.is_file():
        raise CusparseLtError(f"{CUSPARSELT_ENV}={path}: no such file (name a libcusparseLt.so.0, e.g. from "
                              "pip install --no-deps --target DIR nvidia-cusparselt-cu13, or unset it)")
    real = os.path.realpath(library)
    loaded = mapped_cusparselt()
    if loaded and real not in loaded:
        raise CusparseLtError(f"{CUSPARSELT_ENV}={path}: this process already runs cuSPARSELt from {loaded[0]} "
                              "(torch was imported first): call engine.runtime.load_cusparselt() before importing "
                              "torch")
    try:
        ctypes.CDLL(real, mode=ctypes.RTLD_GLOBAL)
    except OSError as err:
        raise CusparseLtError(f"{CUSPARSELT_ENV}={path}: cannot load it ({err})") from None
    return real


def loaded_version() -> str | None:
    """The version ("0.10.0") of the cuSPARSELt this process has loaded, asked of the library; None when
    none is loaded (a CPU build of torch, or before torch is imported without TWOFOUR_CUSPARSELT)."""
    try:
        library = ctypes.CDLL(SONAME, mode=os.RTLD_NOLOAD)  # only an already loaded one: never load here
        get_property = library.cusparseLtGetProperty
    except (OSError, AttributeError):
        return None
    parts = []
    for prop in (_MAJOR, _MINOR, _PATCH):
        value = ctypes.c_int()
        if get_property(prop, ctypes.byref(value)) != 0:
            return None
        parts.append(str(value.value))
    return ".".join(parts)


def cusparselt_facts() -> dict:
    """What makes a 2:4 timing comparable: the cuSPARSELt version loaded (the first object of its soname,
    the one torch's calls bind to), every cuSPARSELt file mapped, and the version torch was compiled
    against (torch.backends.cusparselt.version(); None without cuSPARSELt)."""
    import torch

    try:
        compiled = torch.backends.cusparselt.version()
    except Exception:  # a build without cuSPARSELt
        compiled = None
    return {"cusparselt": loaded_version(), "cusparselt_files": mapped_cusparselt(),
            "cusparselt_torch_compiled": compiled}


def device_record(device) -> dict:
    """What a plan records of the device it was made on: its type, torch, and on a GPU its name, compute
    capability, CUDA and the cuSPARSELt loaded (not the one torch was compiled against)."""
    import torch

    record = {"device": device.type, "torch": torch.__version__}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        record.update(gpu=torch.cuda.get_device_name(device), compute_capability=f"{major}.{minor}",
                      cuda=torch.version.cuda, **cusparselt_facts())
    return record
