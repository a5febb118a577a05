"""benchmarks/engine_gpu_run.sh on a CPU, its steps played by a fake python: what a call finished is
skipped by the next, a step that fails or is killed leaves no result, $OUT gets the results so far."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "engine_gpu_run.sh"

# Records its command line, writes a JSON at --out (or at the argument after `-`), creates --work;
# where the command line contains $FAKE_FAIL it exits 124 (a timeout), $FAKE_HANG it hangs, after
# writing its result (half-written, as far as the run can tell).
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_CALLS"
out="" work="" previous=""
for arg in "$@"; do
  case "$previous" in --out) out="$arg";; --work) work="$arg";; esac
  previous="$arg"
done
if [ "$1" = - ]; then cat > /dev/null; out="$2"; fi
if [ "$1" = benchmarks/engine_gpu_summary.py ]; then out="$2/summary.json"; fi
[ -n "$work" ] && mkdir -p "$work"
[ -n "$out" ] && echo '{"plan_cache": "on: fake"}' > "$out"
case "$*" in *"${FAKE_FAIL:-none}"*) exit 124;; *"${FAKE_HANG:-none}"*) exec sleep 60;; esac
"""


@pytest.fixture
def run(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    (tmp_path / "libcusparseLt.so.0").touch()
    calls = tmp_path / "calls"

    def call(out: str, budget_s: int = 600, **fake_env: str) -> subprocess.Popen:
        """One call of the script; `calls` holds only this call's commands."""
        calls.write_text("")
        env = {**os.environ, "PY": str(fake), "OUT": str(tmp_path / out), "ENGINE_STATE": str(tmp_path / "state"),
               "ENGINE_RUN_BUDGET_S": str(budget_s), "TWOFOUR_CUSPARSELT": str(tmp_path / "libcusparseLt.so.0"),
               "FAKE_CALLS": str(calls), **fake_env}
        return subprocess.Popen(["bash", str(SCRIPT)], env=env, stdout=subprocess.DEVNULL, start_new_session=True)

    call.calls = calls
    call.state = tmp_path / "state"
    return call


def finished(process: subprocess.Popen) -> None:
    assert process.wait(timeout=30) == 0


def test_a_second_call_runs_only_the_steps_the_first_left(run, tmp_path):
    finished(run("out1", FAKE_FAIL="engine_stream.py"))
    done = run.state / "done"
    assert sorted(path.name for path in done.iterdir()) == [
        "accelerate", "benchmark", "cusparselt-0.8", "profile", "qa", "qa-cli", "versions-and-plan-cache"]
    assert not (run.state / "running" / "stream").exists()  # the failed step's output is gone
    assert "--benchmark-modes eager compiled" in run.calls.read_text()  # the plan cache passed
    assert "--tuning-budget-s 15 " in run.calls.read_text()
    assert "engine_profile.py --work" in run.calls.read_text() and "--batch-sizes 16 256 --matrix" in run.calls.read_text()
    assert sorted(path.name for path in (tmp_path / "out1").iterdir()) == [
        "accelerate.json", "benchmark.json", "cusparselt-0.8.json", "profile.json", "qa.json", "run.log",
        "summary.json", "versions.json"]

    finished(run("out2"))
    assert [line.split()[0] for line in run.calls.read_text().splitlines()] == [
        "benchmarks/engine_stream.py", "benchmarks/engine_gpu_summary.py"]
    assert (done / "stream" / "stream.json").exists()
    out = tmp_path / "out2"
    # $OUT takes 8 files: the first six results in step order, summary.json and run.log
    assert len(list(out.iterdir())) == 8 and (out / "stream.json").exists() and not (out / "cusparselt-0.8.json").exists()
    log = (out / "run.log").read_text()
    assert log.count("== call of") == 2 and "== accelerate: done in an earlier call, skipped" in log
    assert "steps left for the next call: none" in log


def test_a_step_killed_with_its_call_runs_again_in_the_next(run):
    process = run("out1", FAKE_HANG="--only accelerate")
    half_written = run.state / "running" / "accelerate" / "accelerate.json"
    deadline = time.monotonic() + 20
    while not half_written.exists():  # the step has written its result and hangs: killed before it exits
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the device call's end
    process.wait()
    assert "--only accelerate" in run.calls.read_text()
    assert not (run.state / "done" / "accelerate").exists()

    finished(run("out2"))
    assert "--only accelerate" in run.calls.read_text()
    assert (run.state / "done" / "accelerate" / "accelerate.json").exists()
    assert not (run.state / "running" / "accelerate").exists()


def test_a_step_waits_for_a_call_with_its_minimum_time_left(run, tmp_path):
    finished(run("out1", budget_s=100))
    log = (tmp_path / "out1" / "run.log").read_text()
    assert "== accelerate: needs 360 s" in log and "waiting for the accelerate step" in log
    assert "steps left for the next call: accelerate qa stream benchmark profile qa-cli" in log
    assert (run.state / "done" / "versions-and-plan-cache").exists()


def test_steps_left_out_are_neither_run_nor_waited_for(run, tmp_path):
    finished(run("out1", budget_s=100, ENGINE_RUN_SKIP="qa stream qa-cli"))
    log = (tmp_path / "out1" / "run.log").read_text()
    assert "steps left for the next call: accelerate benchmark profile" in log
    finished(run("out2", ENGINE_RUN_SKIP="qa stream qa-cli", ENGINE_RUN_TUNING_S="8"))
    calls = run.calls.read_text()
    assert "--tuning-budget-s 8 " in calls  # a short lease's tuning
    assert "--only accelerate" in calls and "--only benchmark" in calls and "engine_profile.py" in calls
    assert "engine_qa_latency.py" not in calls and "engine_stream.py" not in calls and "engine.qa" not in calls
    log = (tmp_path / "out2" / "run.log").read_text()
    assert "== stream: left out (ENGINE_RUN_SKIP)" in log and "steps left for the next call: none" in log
