"""The whole pipeline as one Prefect flow: DVC decides what is stale, Prefect schedules and shows it.

    python -m flows.pipeline                      # run once: `dvc repro`
    python -m flows.pipeline -S prune.exclude=x   # run once as `dvc exp run -S prune.exclude=x`
    python -m flows.pipeline serve --cron "0 3 * * *"   # a deployment: scheduled, and startable
                                                        # by hand from the UI (parameter set_params)
    python -m flows.pipeline --dvc-file gpu/dvc.yaml    # the GPU configuration (gpu/params.yaml)
"""
from __future__ import annotations

import argparse
import sys


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["run", "serve"], default="run")
    parser.add_argument("-S", "--set-param", action="append", default=[], help="as for dvc exp run -S")
    parser.add_argument("--cron", default="0 3 * * *", help="schedule for serve (default: daily at 03:00)")
    parser.add_argument("--dvc-file", default="dvc.yaml",
                        help="the pipeline: dvc.yaml (default) or gpu/dvc.yaml; -S sets the params.yaml beside it")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments()  # before Prefect, DVC and torch load: --help and a wrong argument answer at once

import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from prefect import flow, tags, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from flows.common import (LOGS_DIR, PIPELINE_RUN_ENV, git_commit, log_to_file, report_failure, run_tags,  # noqa: E402
                          use_run_server)
from stages.common import StageError  # noqa: E402
from stages.params import ParamError, validate  # noqa: E402
from stages.validate import validate_inputs  # noqa: E402

# A stage of another dvc.yaml than the root's is named with its file: 'gpu/dvc.yaml:tokenize'.
RAN = re.compile(r"Running stage '(?:[\w./-]+:)?(\w+)'")
SKIPPED = re.compile(r"Stage '(?:[\w./-]+:)?(\w+)' (?:didn't change, skipping|is cached - skipping)")
# DVC 3 ends every run that ran a stage with this, remote or not, and has no setting to leave it out.
PUSH_HINT = re.compile(r"^Use `dvc push` to send your updates to remote storage\.\n?", re.MULTILINE)
STAGE_ERROR = re.compile(r"^twofour \w+: error: .*$", re.MULTILINE)  # a failed stage's line (flows/common.py)


class DvcFailed(StageError):
    """`dvc repro` failed; the failed stage's own line (and its log) says why."""


def summarize_repro(output: str) -> dict[str, list[str]]:
    """Which stages DVC ran and which it skipped as up to date or restored from its run cache."""
    return {"ran": RAN.findall(output), "cached": SKIPPED.findall(output)}


def params_file(dvc_file: str) -> Path:
    """The params.yaml a pipeline's stages read: the one beside its dvc.yaml."""
    return Path(dvc_file).parent / "params.yaml"


def qualified(set_params: list[str], params_path: Path) -> list[str]:
    """-S overrides as DVC reads them for the pipeline of `params_path`: for another pipeline than the
    root's, each names that file ('gpu/params.yaml:train.epochs=3') unless it names a file already."""
    if params_path == Path("params.yaml"):
        return list(set_params)
    return [value if ":" in value.split("=", 1)[0] else f"{params_path}:{value}" for value in set_params]


def check_set_params(set_params: list[str], params_path: Path = Path("params.yaml")) -> None:
    """Raise ParamError unless params.yaml with the -S overrides applied (by DVC's own code, to a
    copy) is valid and its data files are there: `dvc exp run` writes params.yaml before any stage
    reads it (the validate stage would then fail, having removed nothing, but leave params.yaml
    changed). Data paths are read relative to the params file's folder, as its stages run there."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    overrides = to_path_overrides(qualified(set_params, params_path)).get(str(params_path), [])
    source = f"{params_path} with -S {' -S '.join(set_params)}" if set_params else str(params_path)
    with tempfile.TemporaryDirectory() as tmp:
        would_be = Path(tmp) / params_path.name
        try:
            shutil.copyfile(params_path, would_be)
        except FileNotFoundError:
            raise ParamError(f"{params_path}: file not found") from None
        try:
            apply_overrides(would_be, overrides)
        except InvalidArgumentError as err:
            raise ParamError(f"{source}: {err} ({' '.join(str(err.__cause__).split())})") from None  # one line
        validate_inputs(validate(yaml.safe_load(would_be.read_text()), source), root=params_path.parent, source=source)


def dvc_command(set_params: list[str], dvc_file: str = "dvc.yaml") -> list[str]:
    """`dvc repro`, or `dvc exp run -S ...` when params are set; another pipeline than the root's named."""
    target = [] if Path(dvc_file) == Path("dvc.yaml") else [dvc_file]
    if not set_params:
        return [sys.executable, "-m", "dvc", "repro", *target]
    return [sys.executable, "-m", "dvc", "exp", "run", *target,
            *(arg for value in qualified(set_params, params_file(dvc_file)) for arg in ("-S", value))]


@task(name="dvc", cache_policy=NO_CACHE)
def run_dvc(command: list[str], run_id: str) -> str:
    env = dict(os.environ, **{PIPELINE_RUN_ENV: run_id})
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    print(PUSH_HINT.sub("", result.stdout)[-4000:])
    if result.returncode != 0:
        raise DvcFailed(f"{' '.join(command[2:])} failed: {why_dvc_failed(result.stderr)}")
    return result.stdout


def why_dvc_failed(stderr: str) -> str:
    """The failed stage's error line, else DVC's last line."""
    stage_errors = STAGE_ERROR.findall(stderr)
    return stage_errors[-1] if stage_errors else (stderr.strip().splitlines() or ["(no output)"])[-1]


def metrics_table(metrics: dict) -> str:
    """Markdown from `dvc metrics show --json`, as that command shows it: a row per metrics file (the
    scores: F1 per variant, the headline speedup), a column per figure."""
    files = {path: content.get("data", {}) for workspace in metrics.values()
             for path, content in workspace.get("data", {}).items()}
    return pd.json_normalize(list(files.values())).set_axis(list(files)).rename_axis("file").to_markdown()


@flow(name="twofour-pipeline", log_prints=True, flow_run_name=f"pipeline@{git_commit() or 'no-git'}")
def pipeline(set_params: list[str] | None = None, dvc_file: str = "dvc.yaml") -> dict:
    """Run the stale stages of `dvc_file` (as an experiment when params are set); report what ran and
    was cached."""
    check_set_params(set_params or [], params_file(dvc_file))  # again here: a run started from the UI skips cli()
    run_id = os.environ.get(PIPELINE_RUN_ENV) or str(flow_run.get_id() or "local")[:8]  # cli() sets it
    output = run_dvc(dvc_command(set_params or [], dvc_file), run_id)
    summary = summarize_repro(output)
    shown = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show", "--json"],
                           capture_output=True, text=True, check=True).stdout
    metrics_dir = Path("metrics").resolve()
    create_markdown_artifact(
        key="pipeline-summary",
        markdown=(f"**ran:** {', '.join(summary['ran']) or 'nothing'}  \n"
                  f"**cached:** {', '.join(summary['cached']) or 'nothing'}  \n"
                  f"**metrics:** [{metrics_dir}](file://{metrics_dir})\n\n{metrics_table(json.loads(shown))}"),
        description="twofour: what this pipeline run ran, what DVC had cached, and the resulting metrics",
    )
    return summary


def cli(argv: list[str] | None = None) -> None:
    """Any failure ends in one line on stderr and exit status 1, its traceback in logs/pipeline.log."""
    args = arguments(argv)
    try:
        check_set_params(args.set_param, params_file(args.dvc_file))
    except ParamError as err:
        print(f"twofour pipeline: error: {err}", file=sys.stderr)
        sys.exit(1)
    log = LOGS_DIR / "pipeline.log"
    log_to_file(log)
    try:
        use_run_server()  # before `dvc repro`, whose stages then report to the same server
        if args.mode == "serve":
            pipeline.serve(name="twofour-scheduled", cron=args.cron, tags=run_tags(),
                           parameters={"set_params": args.set_param, "dvc_file": args.dvc_file})
        else:
            # The run's id in its own tags as in its stage runs' (flows/common.py run_tags)
            os.environ.setdefault(PIPELINE_RUN_ENV, uuid.uuid4().hex[:8])
            with tags(*run_tags()):
                print(pipeline(args.set_param, args.dvc_file))
    except Exception as err:  # noqa: BLE001 - every failure ends in its one line
        sys.exit(report_failure("pipeline", err, log))


if __name__ == "__main__":
    cli()
