"""`python -m flows.pipeline` fails as a stage does: one line on stderr, exit status 1, the traceback
(where there is one worth reading) in logs/pipeline.log."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from conftest import REPO
from flows.pipeline import why_dvc_failed


def pipeline(cwd, **env):
    environment = dict(os.environ, PYTHONPATH=str(REPO), PREFECT_HOME=str(cwd / ".prefect-home"), **env)
    environment.pop("PREFECT_API_URL", None)
    return subprocess.run([sys.executable, "-m", "flows.pipeline"], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=600)


def test_a_missing_params_file_is_one_line(tmp_path):
    result = pipeline(tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["twofour pipeline: error: params.yaml: file not found"]


def test_a_failed_dvc_run_is_one_line_with_the_traceback_in_the_log(tmp_path):
    shutil.copyfile(REPO / "params.yaml", tmp_path / "params.yaml")  # valid params and data, but no DVC repository
    shutil.copytree(REPO / "data/embedded", tmp_path / "data/embedded")
    result = pipeline(tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("twofour pipeline: error: dvc repro failed: ERROR: you are not inside of a DVC repository")
    log = (tmp_path / "logs/pipeline.log").read_text()
    assert "Traceback" in log and "DvcFailed" in log


def test_a_server_that_cannot_start_fails_at_once_in_one_line(tmp_path):
    shutil.copyfile(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO / "data/embedded", tmp_path / "data/embedded")
    started = time.monotonic()
    result = pipeline(tmp_path, PREFECT_API_DATABASE_CONNECTION_URL="sqlite+aiosqlite:////no/such/dir/prefect.db")
    took = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"twofour pipeline: error: RuntimeError: the Prefect server for this run did not start "
        f"(see {tmp_path}/.prefect-home/twofour-servers/server.log) (traceback in logs/pipeline.log)"]
    assert took < 120  # the dead server is noticed, not waited for until the start-up limit (300 s)
    assert not (tmp_path / "dvc.lock").exists()


def test_the_failed_stage_line_explains_a_failed_dvc_run():
    stderr = ("Running stage 'tokenize':\n"
              "twofour tokenize: error: data/x.json: answer_start 3 does not point at its text\n"
              "ERROR: failed to reproduce 'tokenize': failed to run: python -m flows.tokenize, exited with 1\n")
    assert why_dvc_failed(stderr) == "twofour tokenize: error: data/x.json: answer_start 3 does not point at its text"
    assert why_dvc_failed("ERROR: you are not inside of a DVC repository\n") == (
        "ERROR: you are not inside of a DVC repository")
    assert why_dvc_failed("") == "(no output)"
