"""Thin Prefect glue shared by the stage flows: one flow per DVC stage, same shape for all.

A stage flow loads params.yaml (validated), runs the stage's work as a Prefect task under
run facts (device, versions, wall time, peak memory), writes its output directory atomically,
writes reports/<stage>.json (what it measured, with the run facts), plots/<stage>_<name>.json (a
chart's data), and publishes its figures as a Prefect table artifact. Its flow run is tagged with
the git commit (and DVC experiment, and the whole-pipeline run that started it), so the stages of
one `dvc repro` are found together.

With no PREFECT_API_URL, the flow reports to the run's own server (flows/server.py). Its log,
Prefect's included, goes to logs/<stage>.log; stderr gets the stage's warnings and, on failure,
one line.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import faulthandler
import functools
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no phoning home,
os.environ.setdefault("DO_NOT_TRACK", "1")  # from Prefect's SDK either (it reports from terminals)
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import prefect.context  # noqa: E402
from prefect import flow, tags, task  # noqa: E402
from prefect.artifacts import create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.settings import temporary_settings  # noqa: E402
from prefect.utilities.collections import dict_to_flatdict  # noqa: E402
from tqdm import tqdm  # noqa: E402

from engine.errors import InputError, typed_first_line  # noqa: E402
import flows  # noqa: E402
from flows import server  # noqa: E402
from stages.common import (  # noqa: E402
    atomic_dir, bind_to_parent, remove_stale_temporaries, run_facts, write_json)
from stages.params import ParamError, Params, load_params  # noqa: E402

PLOTS_DIR = Path("plots")
REPORTS_DIR = Path("reports")
LOGS_DIR = Path("logs")
# How long a stage that is done, failed or stopped with Ctrl-C may take to exit (Prefect's last logs
# and events, its record of a crashed run) before it exits anyway.
EXIT_GRACE_S = 30.0
_way_out: tuple[threading.Timer, int, str | None] | None = None  # exit_within's deadline, status, stopped stage
_interrupt_reported = threading.Event()  # report_interrupt's line is out
OUTPUT_FOLDERS = (Path("."), Path("models"))  # where the stages' output folders are (features, models/*)
PIPELINE_RUN_ENV = "TWOFOUR_PIPELINE_RUN"  # set by flows/pipeline.py for the stages it starts
RUN_SERVER_ENV = "TWOFOUR_RUN_SERVER"  # the URL of the run's server, when PREFECT_API_URL is that

Work = Callable[[Params, "Path | None"], dict]


def git_commit() -> str | None:
    """The commit the run belongs to: DVC's experiment baseline, else HEAD."""
    rev = os.environ.get("DVC_EXP_BASELINE_REV") or head_commit()
    return rev[:8] if rev else None


@functools.cache  # asked for the run's name and for its tags
def head_commit() -> str | None:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def run_tags() -> list[str]:
    found = ["twofour"]
    if commit := git_commit():
        found.append(f"git:{commit}")
    if experiment := os.environ.get("DVC_EXP_NAME"):
        found.append(f"exp:{experiment}")
    if pipeline_run := os.environ.get(PIPELINE_RUN_ENV):
        found.append(f"pipeline:{pipeline_run}")
    return found


def is_transient(task, task_run, state) -> bool:
    """Retry only what may pass on a second try: never bad input, bad params or a bad file."""
    try:
        state.result()
    except Exception as err:  # noqa: BLE001 - the classification is the point
        return not is_input_error(err)
    return False


def is_input_error(err: BaseException) -> bool:
    """The input is wrong: a retry meets the same. An OSError naming a file (a directory where a
    file should be, no such file, no permission) is one; a dropped connection is not."""
    return isinstance(err, (InputError, ParamError)) or (isinstance(err, OSError) and err.filename is not None)


def metric_rows(metrics: dict) -> list[dict]:
    """The default artifact table: one row per (flattened) figure; per-layer details stay in the report."""
    figures = {key: value for key, value in metrics.items() if key != "layers"}
    return [{"metric": ".".join(keys), "value": str(value)} for keys, value in dict_to_flatdict(figures).items()]


@task(name="publish metrics", cache_policy=NO_CACHE)
def publish(stage: str, table: list[dict]) -> None:
    create_table_artifact(key=f"{stage.replace('_', '-')}-metrics", table=table,
                          description=f"twofour stage {stage}: {REPORTS_DIR}/{stage}.json")


def run_stage(stage: str, work: Work, params: Params, out: str | None, plots: tuple[str, ...]) -> dict:
    """The stage's work under run facts, with its outputs written atomically."""
    remove_stale_temporaries(*OUTPUT_FOLDERS)  # whichever stage a killed one was
    with run_facts() as facts:
        if out is None:
            metrics = work(params, None)
        else:
            with atomic_dir(out) as tmp:
                metrics = work(params, tmp)
    for name in plots:
        write_json(PLOTS_DIR / f"{stage}_{name}.json", metrics.pop(name))
    metrics["run"] = facts
    write_json(REPORTS_DIR / f"{stage}.json", metrics)
    return metrics


@dataclass(frozen=True)
class StageFlow:
    """One stage as a Prefect flow, what each flows/<stage>.py defines and hands to `main`:
    `work(params, out_dir)` returns its metrics and `table(metrics)` the rows of its Prefect artifact;
    `build(params_path)` makes the flow that runs it."""

    name: str
    work: Work
    out: str | None = None
    plots: tuple[str, ...] = ()
    table: Callable[[dict], list[dict]] = metric_rows

    def build(self, params_path: str):
        # No flow parameters: Prefect encodes them with FastAPI, whose import alone is a noticeable part of a stage.
        # Prints stay prints: Prefect's log_prints also takes what a library prints into its own capture
        # (dill reads dis.dis' output to find a function's globals, for datasets' fingerprints).
        @flow(name=self.name, log_prints=False, flow_run_name=f"{self.name}@{git_commit() or 'no-git'}")
        def stage_run() -> dict:
            params = load_params(params_path)
            work_task = task(run_stage, name=self.name, cache_policy=NO_CACHE,
                             retries=params["orchestration.retries"],
                             retry_delay_seconds=params["orchestration.retry_delay_s"],
                             retry_condition_fn=is_transient)
            metrics = work_task(self.name, self.work, params, self.out, self.plots)
            publish(self.name, self.table(metrics))
            return metrics

        return stage_run


def use_run_server() -> bool:
    """Point Prefect at this run's server (flows/server.py) unless another server is configured;
    True when this process reports to the run's server."""
    if configured := os.environ.get("PREFECT_API_URL"):
        return configured == os.environ.get(RUN_SERVER_ENV)
    url = server.api_url()
    os.environ.update({"PREFECT_API_URL": url, RUN_SERVER_ENV: url, **server.CLIENT_ENV})  # for `dvc repro`'s stages
    os.environ.setdefault("PREFECT_UI_URL", server.LASTING_UI_URL)
    prefect.context.refresh_global_settings_context()
    return True


def run_server_settings() -> contextlib.AbstractContextManager:
    """Prefect settings for a stage on its run's server: no flow run heartbeats. They let an
    automation on a lasting server mark crashed runs; the run's server has none and dies with the
    run, and stopping the heartbeat thread delays the stage's exit."""
    return temporary_settings(updates={"flows.heartbeat_frequency": None})


class PlainTextFormatter(logging.Formatter):
    """Without terminal escape codes (transformers writes its load report in bold whatever the output)."""

    ESCAPE_CODE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

    def format(self, record: logging.LogRecord) -> str:
        return self.ESCAPE_CODE.sub("", super().format(record))


def log_to_file(path: Path) -> None:
    """Everything logged (Prefect's run and engine logs, library warnings, tracebacks) goes to
    `path`; stderr keeps only the stages' own warnings (loggers under `stages`)."""
    from transformers.utils import logging as transformers_logging

    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path, mode="w")
    to_file.setFormatter(PlainTextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    root.addHandler(to_file)
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request to the Prefect API
    transformers_logging.disable_default_handler()  # its own stderr handler (a model's load report)
    transformers_logging.enable_propagation()
    for name in ("prefect._internal", "uvicorn", "fastapi"):  # they do not propagate to the root
        logging.getLogger(name).handlers = [to_file]
    logging.captureWarnings(True)
    stage_warnings = logging.StreamHandler(sys.stderr)
    stage_warnings.setLevel(logging.WARNING)
    logging.getLogger("stages").addHandler(stage_warnings)


def one_line(err: BaseException) -> str:
    if isinstance(err, (InputError, ParamError)):
        return str(err)
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    return typed_first_line(err)


def main(stage: StageFlow, args: argparse.Namespace) -> None:
    """Command-line entry of a stage flow, with its arguments (flows/cli.py): any failure ends in
    one line on stderr and exit status 1, its traceback in logs/<stage>.log.

    SIGTERM becomes SystemExit, so a stage stopped that way (or by its parent's death) still
    removes its temporary output.
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    log = LOGS_DIR / f"{stage.name}.log"
    log_to_file(log)
    stop_on_ctrl_c(stage.name, log)
    try:
        bind_to_parent(flows.STARTED_BY)  # dies with `dvc repro` (SIGTERM, above); publishes nothing once it is gone
        settings = run_server_settings() if use_run_server() else contextlib.nullcontext()
        with settings, tags(*run_tags()):
            stage.build(args.params)()
    except Exception as err:  # noqa: BLE001 - every failure ends in its one line
        end_progress_bars()
        exit_without_teardown(report_failure(stage.name, err, log), log)
    except KeyboardInterrupt:  # Ctrl-C: a user's stop, not a failure with a traceback to read
        end_progress_bars()
        report_interrupt(stage.name)
        exit_without_teardown(128 + signal.SIGINT, log)
    exit_without_teardown(0, log)


def stop_on_ctrl_c(name: str, log: Path) -> None:
    """Ctrl-C raises KeyboardInterrupt, as Python's own handler does, and from then on the stage has
    EXIT_GRACE_S to end: its way out (Prefect recording the run as crashed, threads it waits for) cannot
    hold it past that. A Ctrl-C once the stage is on its way out (stopped, done or failed) ends it at once
    with the status it was leaving with, not with a KeyboardInterrupt from inside its teardown."""

    def on_ctrl_c(signum, frame):
        if _way_out is not None:
            _, status, interrupted = _way_out
            exit_within(0, status, interrupted, log)
            return
        exit_within(EXIT_GRACE_S, 128 + signum, name, log)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_ctrl_c)


def exit_within(seconds: float, status: int, interrupted: str | None, log: Path) -> None:
    """Ends the process with `status` in `seconds` unless it has ended by then: every thread's stack to
    `log`, for what held it up, and, for the stage `interrupted` by Ctrl-C, its line unless it is out.
    Armed again, it replaces the last."""
    global _way_out

    def give_up() -> None:
        with contextlib.suppress(OSError), open(log, "a") as out:  # the exit must not depend on the log
            why = f"had not exited {seconds:g} s after it stopped" if seconds else "got Ctrl-C on its way out"
            out.write(f"the stage {why}; its threads:\n")
            out.flush()
            faulthandler.dump_traceback(out, all_threads=True)
        if interrupted:
            report_interrupt(interrupted, stuck=True)
        os._exit(status)

    if _way_out is not None:
        _way_out[0].cancel()
    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    _way_out = (timer, status, interrupted)
    timer.start()


def end_progress_bars() -> None:
    """Closes the bars a stopped stage left open (each ends its line), so its one line starts a line of its own."""
    for bar in list(tqdm._instances):
        bar.close()


def report_interrupt(name: str, stuck: bool = False) -> None:
    """The one line of a stage stopped with Ctrl-C, to stderr once. `stuck`: from exit_within's thread,
    past any Python lock a stuck thread may hold."""
    if _interrupt_reported.is_set():
        return
    _interrupt_reported.set()
    line = (f"twofour {name}: interrupted: it published nothing, and a rerun starts it again (training from its "
            f"last checkpoint){checkout_hint(name)}")
    if stuck:
        os.write(sys.stderr.fileno(), f"\n{line}\n".encode())
    else:
        print(line, file=sys.stderr)


def report_failure(name: str, err: BaseException, log: Path) -> int:
    """The traceback to `log`, one line to stderr; returns the exit status."""
    logging.getLogger("twofour").error(f"{name} failed", exc_info=err)
    where = "" if isinstance(err, (InputError, ParamError)) else f" (traceback in {log})"
    print(f"twofour {name}: error: {one_line(err)}{where}{checkout_hint(name)}", file=sys.stderr)
    return 1


def checkout_hint(name: str) -> str:
    """Under DVC, which removed the stage's outputs before running it: how to get them back."""
    return f"; its last outputs come back with `dvc checkout {name}`" if os.environ.get("DVC_STAGE") else ""


def exit_without_teardown(status: int, log: Path) -> NoReturn:
    """Exit as Python does, less freeing every module and object one by one (slow once torch and
    Prefect are loaded): threads are joined and their exit hooks run (Prefect sends its
    last logs and events there), then the atexit handlers, then the output streams are flushed;
    within EXIT_GRACE_S, whatever a thread or hook is waiting for."""
    exit_within(EXIT_GRACE_S, status, None, log)  # a stage's line is out by now
    threading._shutdown()  # what the interpreter's exit calls first
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
