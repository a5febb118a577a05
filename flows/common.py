"""Thin Prefect glue shared by the stage flows: one flow per DVC stage, same shape for all.

A stage flow loads params.yaml (validated), runs the stage's work as a Prefect task under
run facts (device, versions, wall time, peak memory), writes its output directory atomically,
writes metrics/<stage>.json, plots/<stage>_<name>.json, and publishes the metrics as a Prefect
table artifact. Its flow run is tagged with the git commit (and DVC experiment, and the
whole-pipeline run that started it), so the stages of one `dvc repro` are found together.

With no PREFECT_API_URL, the flow reports to the run's own server (flows/server.py). Its log,
Prefect's included, goes to logs/<stage>.log; stderr gets the stage's warnings and, on failure,
one line.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no phoning home
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import prefect.context  # noqa: E402
from prefect import flow, tags, task  # noqa: E402
from prefect.artifacts import create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from flows import server  # noqa: E402
from stages.common import StageError, atomic_dir, run_facts, write_json  # noqa: E402
from stages.params import ParamError, Params, load_params  # noqa: E402

METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")
REPORTS_DIR = Path("reports")
LOGS_DIR = Path("logs")
PIPELINE_RUN_ENV = "TWOFOUR_PIPELINE_RUN"  # set by flows/pipeline.py for the stages it starts

Work = Callable[[Params, "Path | None"], dict]


def git_commit() -> str | None:
    """The commit the run belongs to: DVC's experiment baseline, else HEAD."""
    rev = os.environ.get("DVC_EXP_BASELINE_REV")
    if not rev:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
        rev = result.stdout.strip() if result.returncode == 0 else None
    return rev[:8] if rev else None


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
    return isinstance(err, (StageError, ParamError)) or (isinstance(err, OSError) and err.filename is not None)


def metric_rows(metrics: dict) -> list[dict]:
    """The default artifact table: one row per (flattened) metric."""
    import pandas as pd  # here: only this table needs it, and it costs every stage's start otherwise

    flat = pd.json_normalize(metrics).to_dict("records")[0]
    return [{"metric": k, "value": str(v)} for k, v in flat.items()]


@task(name="publish metrics", cache_policy=NO_CACHE)
def publish(stage: str, table: list[dict]) -> None:
    create_table_artifact(key=f"{stage.replace('_', '-')}-metrics", table=table,
                          description=f"twofour stage {stage}: metrics/{stage}.json")


def run_stage(stage: str, work: Work, params: Params, out: str | None,
              plots: tuple[str, ...], details: tuple[str, ...]) -> dict:
    """The stage's work under run facts, with its outputs written atomically."""
    with run_facts() as facts:
        if out is None:
            metrics = work(params, None)
        else:
            with atomic_dir(out) as tmp:
                metrics = work(params, tmp)
    for name in plots:
        write_json(PLOTS_DIR / f"{stage}_{name}.json", metrics.pop(name))
    extra = {name: metrics.pop(name) for name in details if name in metrics}
    if extra:
        write_json(REPORTS_DIR / f"{stage}.json", extra)
    metrics["run"] = facts
    write_json(METRICS_DIR / f"{stage}.json", metrics)
    return metrics


def stage_flow(stage: str, work: Work, out: str | None = None, plots: tuple[str, ...] = (),
               details: tuple[str, ...] = ("layers",), table: Callable[[dict], list[dict]] = metric_rows):
    """Build the Prefect flow for one stage; `work(params, out_dir)` returns its metrics and
    `table(metrics)` the rows of its Prefect artifact."""

    @flow(name=stage, log_prints=True, validate_parameters=False,
          flow_run_name=f"{stage}@{git_commit() or 'no-git'}")
    def stage_run(params_path: str = "params.yaml") -> dict:
        params = load_params(params_path)
        work_task = task(run_stage, name=stage, cache_policy=NO_CACHE,
                         retries=params["orchestration.retries"],
                         retry_delay_seconds=params["orchestration.retry_delay_s"],
                         retry_condition_fn=is_transient)
        metrics = work_task(stage, work, params, out, plots, details)
        publish(stage, table(metrics))
        return metrics

    return stage_run


def use_run_server() -> None:
    """Point Prefect at this run's server (flows/server.py) unless a server is configured."""
    if not os.environ.get("PREFECT_API_URL"):
        os.environ["PREFECT_API_URL"] = server.api_url()
        prefect.context.refresh_global_settings_context()


def log_to_file(path: Path) -> None:
    """Everything logged (Prefect's run and engine logs, library warnings, tracebacks) goes to
    `path`; stderr keeps only the stages' own warnings (loggers under `stages`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path, mode="w")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    root.addHandler(to_file)
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request to the Prefect API
    for name in ("prefect._internal", "uvicorn", "fastapi"):  # they do not propagate to the root
        logging.getLogger(name).handlers = [to_file]
    logging.captureWarnings(True)
    stage_warnings = logging.StreamHandler(sys.stderr)
    stage_warnings.setLevel(logging.WARNING)
    logging.getLogger("stages").addHandler(stage_warnings)


def one_line(err: BaseException) -> str:
    if isinstance(err, (StageError, ParamError)):
        return str(err)
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror or err}"
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def main(stage_run) -> None:
    """Command-line entry of a stage flow: any failure ends in one line on stderr and exit status 1,
    its traceback in logs/<stage>.log.

    SIGTERM becomes SystemExit, so a stage stopped that way still removes its temporary output.
    """
    parser = argparse.ArgumentParser(prog=f"python -m flows.{stage_run.name}",
                                     description=sys.modules["__main__"].__doc__)
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    log = LOGS_DIR / f"{stage_run.name}.log"
    log_to_file(log)
    try:
        use_run_server()
        with tags(*run_tags()):
            stage_run(args.params)
    except Exception as err:  # noqa: BLE001 - every failure ends in its one line
        logging.getLogger("twofour").error("the stage failed", exc_info=err)
        where = "" if isinstance(err, (StageError, ParamError)) else f" (traceback in {log})"
        print(f"twofour {stage_run.name}: error: {one_line(err)}{where}", file=sys.stderr)
        sys.exit(1)
