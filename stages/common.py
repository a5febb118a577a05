"""Helpers every stage shares: atomic outputs bound to the run, run facts, seeding, JSON I/O."""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from engine import common as engine_common
from engine.common import best_device, mode_after_umask
from engine.errors import InputError
from engine.runtime import device_record

from .hardware import cpu_facts


class StageError(InputError):
    """A failure caused by the stage's input (data, model, params); its message is the whole story."""


class RunLost(StageError):
    """The process that started this stage is gone (a killed `dvc repro`): its outputs belong to no run."""


_run_parent: int | None = None  # the pid that started this stage's run, once bind_to_parent ran
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def bind_to_parent(started_by: int | None = None) -> None:
    """Tie this process to the one that started it (`started_by`, its parent pid read as the process
    began: else it is read now): on Linux the kernel sends it SIGTERM when that process dies
    (PR_SET_PDEATHSIG), and from here on nothing is published once the parent is gone
    (check_run_held). Otherwise a `dvc repro` killed with SIGKILL leaves the stage running, and it
    later replaces outputs that dvc.lock no longer describes."""
    global _run_parent
    _run_parent = started_by if started_by is not None else os.getppid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    check_run_held()  # the parent may have died before prctl took effect


def check_run_held() -> None:
    """RunLost if this process was bound to a parent (bind_to_parent) that is no longer its parent:
    called right before anything is published."""
    if _run_parent is not None and os.getppid() != _run_parent:
        raise RunLost(f"the process that started this stage (pid {_run_parent}) is gone: nothing published")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success it replaces `path`, on failure it vanishes.

    A killed or failed stage therefore never leaves a half-written artifact for DVC to cache.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    # The owner's pid in the name: remove_stale_temporaries removes it only once that process is gone.
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    tmp.chmod(mode_after_umask(0o777))
    try:
        yield tmp
        check_run_held()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(*folders: str | Path) -> None:
    """Remove the temporary outputs (atomic_dir's .<name>.tmp-<pid>-*) in `folders` whose process is
    gone: a stage killed with SIGKILL leaves its half-written copy, which any later stage clears."""
    for folder in folders:
        for stale in Path(folder).glob(".*.tmp-*"):
            owner = stale.name.rpartition(".tmp-")[2].split("-")[0]
            if not (owner.isdigit() and _alive(int(owner))):
                shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically, unless the run it belongs to is lost (check_run_held)."""
    engine_common.write_text(path, text, before_replace=check_run_held)


def write_json(path: str | Path, obj) -> None:
    """Write JSON atomically, unless the run it belongs to is lost; nothing is written if `obj` does not
    serialise."""
    engine_common.write_json(path, obj, before_replace=check_run_held)


def read_json(path: str | Path):
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path}: file not found (did the stage that writes it run?)") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device_facts(device: torch.device | None = None) -> dict:
    """The device as a plan records it (engine.runtime.device_record), with the CPU's model and numeric
    instruction sets (they decide which kernels a CPU runs, on a GPU machine too: the host computes some
    of it) and library versions: what makes a figure comparable."""
    import transformers

    device = device or best_device()
    facts = {**device_record(device), "transformers": transformers.__version__,
             "python": platform.python_version(), **cpu_facts()}
    if device.type != "cuda":
        facts["cpu"] = platform.processor() or platform.machine()
        facts["cpu_threads"] = torch.get_num_threads()
    return facts


@contextlib.contextmanager
def run_facts(device: torch.device | None = None) -> Iterator[dict]:
    """Collect device/versions up front, then wall time and peak memory when the block ends."""
    device = device or best_device()
    facts = device_facts(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    yield facts
    facts["wall_s"] = round(time.perf_counter() - start, 3)
    if device.type == "cuda":
        facts["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    else:
        # ru_maxrss is in KiB on Linux: the whole process's peak resident memory.
        facts["peak_memory_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

