"""Several training processes for one stage: torchrun starts one process per GPU (gloo on the CPU),
each calls the stage's own function, DDP runs through the Trainer, and only the first process writes.

The stage's process only launches and waits: DVC still sees one stage and Prefect one flow run,
whose log gets every rank's lines. The first process's return value (the stage's metrics) comes
back through a file; a StageError in any rank comes back as the stage's one-line error.
The benchmark stage launches its processes the same way (cusparselt_first), with no process group:
they need no collective op.

    python -m stages.distributed EXCHANGE_DIR   # what torchrun runs in each process
"""
from __future__ import annotations

import ctypes
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable

import torch

from .common import StageError, read_json, write_json

LAUNCHED = "TWOFOUR_LAUNCHED"  # set in the processes torchrun starts: they train, they do not launch
REPO = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1  # prctl(2)
# Looked up now: between fork and exec (preexec_fn) only an already loaded function is safe to call.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
# A rank of the engine: this module imports torch, so the rank loads the named cuSPARSELt in -c first.
ENGINE_RANK = ["--no-python", sys.executable, "-u", "-c",
               "import sys; from engine.runtime import load_cusparselt; load_cusparselt(); "
               "from pathlib import Path; from stages.distributed import main; main(Path(sys.argv[1]))"]


def world_size() -> int:
    """How many processes train together (torchrun's WORLD_SIZE; 1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def is_first_process() -> bool:
    """The process that writes outputs: rank 0, or the only one."""
    return int(os.environ.get("RANK", 0)) == 0


def processes_asked(params, section: str) -> int:
    """How many processes `section`'s num_processes asks for, `auto` being one per visible GPU (1 on the
    CPU); 1 inside a launched process, which does the work itself. Fails in one line when more GPUs
    are asked for than seen."""
    if os.environ.get(LAUNCHED):
        return 1
    setting = params[section]["num_processes"]
    gpus = torch.cuda.device_count()
    processes = max(1, gpus) if setting == "auto" else setting
    if gpus and processes > gpus:
        raise StageError(f"{section}.num_processes={setting}: only {gpus} GPU(s) visible, one process per GPU")
    return processes


def processes_to_launch(params, section: str) -> int:
    """How many processes the stage's training `section` (train, finetune) asks for (processes_asked).

    Fails in one line when the batch does not split evenly, or when more GPUs are asked for than seen."""
    setting, batch_size = params[section]["num_processes"], params[section]["batch_size"]
    processes = processes_asked(params, section)
    if batch_size % processes:
        raise StageError(f"{section}.batch_size={batch_size} does not split over {processes} processes "
                         f"({section}.num_processes={setting}): make it a multiple of {processes}")
    return processes


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies (kill -9 included), so no orphan keeps
    training, or holds a GPU, after the stage is gone. torchrun starts its ranks in sessions of their
    own, out of reach of a signal to the stage's process group. Linux only."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_in_processes(function: Callable[..., dict], processes: int, *args, cusparselt_first: bool = False) -> dict:
    """function(*args) in `processes` processes under torchrun; what the first one returns.
    cusparselt_first: ranks that run the 2:4 engine load $TWOFOUR_CUSPARSELT before anything
    imports torch (engine/runtime.py), as the stage's own process did.

    Each rank's output is printed as it comes, prefixed [rank<N>]: under a Prefect flow with
    log_prints, print lands in the flow run's log and in logs/<stage>.log."""
    with tempfile.TemporaryDirectory(prefix="twofour-ranks-") as exchange:
        exchange = Path(exchange)
        (exchange / "call.pkl").write_bytes(pickle.dumps((function, args)))
        rank_command = ENGINE_RANK if cusparselt_first else ["-m", __name__]
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   "--tee=3", f"--log-dir={exchange / 'logs'}", *rank_command, str(exchange)]
        env = {
            **os.environ,
            LAUNCHED: "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": "[rank${rank}]:",
            # The CPU cores shared out among the ranks (torchrun would give each one thread).
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes))),
        }
        launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    preexec_fn=die_with_parent)
        try:
            for line in launcher.stdout:
                print(line.rstrip("\n"), flush=True)
            launcher.wait()
        except BaseException:  # SIGTERM (SystemExit) or Ctrl-C: torchrun stops its ranks before it goes
            launcher.terminate()
            launcher.wait()
            raise
        if launcher.returncode != 0:
            raise_rank_error(exchange, launcher.returncode)
        return read_json(exchange / "result.json")


def raise_rank_error(exchange: Path, returncode: int) -> None:
    """The failed run's error: a rank's StageError as it is (the root cause; the other ranks then only
    lose their peer), else the first rank's exception."""
    errors = [read_json(path) for path in sorted(exchange.glob("error-rank*.json"))]
    for error in sorted(errors, key=lambda e: (not e["stage_error"], e["rank"])):
        if error["stage_error"]:
            raise StageError(error["message"])
        raise RuntimeError(f"rank {error['rank']}: {error['message']}")
    raise RuntimeError(f"torchrun exited with status {returncode} (each rank's log above)")


def main(exchange: Path) -> None:
    """One rank: call the pickled function; rank 0 writes its result, a failing rank its error."""
    die_with_parent()
    function, args = pickle.loads((exchange / "call.pkl").read_bytes())
    rank = int(os.environ["RANK"])
    try:
        result = function(*args)
    except Exception as err:
        traceback.print_exc()
        first_line = (str(err).strip().splitlines() or [""])[0]
        write_json(exchange / f"error-rank{rank}.json",
                   {"rank": rank, "stage_error": isinstance(err, StageError),
                    "message": first_line if isinstance(err, StageError) else f"{type(err).__name__}: {first_line}"})
        sys.exit(1)
    if is_first_process():
        write_json(exchange / "result.json", result)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
