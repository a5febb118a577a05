"""stages/common.py: a stage's outputs when the process that started it is killed."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from conftest import REPO

# A stage-like process: bound to its parent as flows.common.main binds a stage, it fills a temporary
# output, says so, waits for "go" (or 30 s), then publishes the output and a report.
STAGE = """
import signal, sys, time
from pathlib import Path
from stages.common import atomic_dir, bind_to_parent, write_json
out = Path(sys.argv[1])
signal.signal(signal.SIGTERM, {handler})
bind_to_parent()
with atomic_dir(out / "model") as tmp:
    (tmp / "weights").write_text("half")
    (out / "ready").touch()
    deadline = time.time() + 30
    while not (out / "go").exists() and time.time() < deadline:
        time.sleep(0.05)
write_json(out / "report.json", {{}})
"""
# Its parent, as `dvc repro` starts a stage: prints the stage's pid and waits for it.
PARENT = "import subprocess, sys; stage = subprocess.Popen(sys.argv[1:]); print(stage.pid, flush=True); stage.wait()"


def wait_for(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def orphan_stage(tmp_path: Path, handler: str) -> tuple[int, Path]:
    """Start parent -> stage, wait until the stage is mid-output, kill -9 the parent; the stage's pid."""
    out = tmp_path / "out"
    out.mkdir()
    stage = [sys.executable, "-c", STAGE.format(handler=handler), str(out)]
    parent = subprocess.Popen([sys.executable, "-c", PARENT, *stage], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    stage_pid = int(parent.stdout.readline())
    try:
        assert wait_for(lambda: (out / "ready").exists()), "the stage never started its output"
    finally:
        parent.kill()
        parent.wait()
    return stage_pid, out


def published(out: Path) -> list[str]:
    return sorted(path.name for path in out.iterdir() if path.name not in ("ready", "go"))


def test_orphaned_stage_after_the_dvc_parent_is_killed_dies_and_publishes_nothing(tmp_path):
    """The stage turns SIGTERM into SystemExit, as flows.common.main does: its parent's death ends it."""
    stage_pid, out = orphan_stage(tmp_path, "lambda signum, frame: sys.exit(128 + signum)")
    assert wait_for(lambda: gone(stage_pid), timeout=10), "the stage outlived the process that started it"
    assert published(out) == []  # not even its temporary output


def test_orphaned_stage_after_the_dvc_parent_is_killed_that_lives_on_publishes_nothing(tmp_path):
    """A stage that the death signal does not stop (here: it ignores SIGTERM) still publishes nothing."""
    stage_pid, out = orphan_stage(tmp_path, "signal.SIG_IGN")
    (out / "go").touch()
    assert wait_for(lambda: gone(stage_pid), timeout=30)
    assert published(out) == []


def test_a_stage_whose_parent_died_before_it_bound_itself_publishes_nothing(tmp_path):
    """The parent read as the process began (flows.STARTED_BY), not when it binds: a `dvc repro` that
    dies during the stage's imports would otherwise leave it bound to the reaper, and it would publish."""
    stage = ("import os, sys, time; started_by = os.getppid(); time.sleep(1.5)\n"  # the imports' seconds
             "from stages.common import RunLost, bind_to_parent\n"
             "try:\n    bind_to_parent(started_by)\nexcept RunLost as err:\n"
             "    open(sys.argv[1], 'w').write(str(err))\nelse:\n    open(sys.argv[1], 'w').write('bound')\n")
    outcome = tmp_path / "outcome"
    # the stage orphaned once it has begun (its parent read), before it binds itself
    parent = "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(0.7)"
    subprocess.run([sys.executable, "-c", parent, sys.executable, "-c", stage, str(outcome)], cwd=REPO,
                   env=dict(os.environ, PYTHONPATH=str(REPO)), check=True, timeout=60)
    assert wait_for(outcome.exists, timeout=30)
    time.sleep(0.2)  # written in one call; let it close
    assert outcome.read_text().startswith("the process that started this stage (pid ")


def test_flows_reads_its_parent_before_importing_anything_slow():
    source = (REPO / "flows" / "__init__.py").read_text()
    assert "STARTED_BY = os.getppid()" in source and "import os" in source
    assert not [line for line in source.splitlines() if line.startswith(("import ", "from ")) and line != "import os"]


def test_bound_to_a_living_parent_a_stage_publishes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "go").touch()
    subprocess.run([sys.executable, "-c", STAGE.format(handler="signal.SIG_DFL"), str(out)], cwd=REPO, check=True,
                   env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert published(out) == ["model", "report.json"] and (out / "model" / "weights").read_text() == "half"


def test_a_killed_stages_temporary_copy_is_cleaned_on_the_next_start_of_any_stage(tmp_path, monkeypatch):
    """A copy whose process is gone goes when any stage starts (here one with no output folder); a
    copy whose process is alive (a stage running beside it) stays."""
    import json

    from flows.common import run_stage
    from stages.params import Params

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    monkeypatch.chdir(tmp_path)
    stale = [Path(f"models/.sparse.tmp-{dead}-k3x9"), Path(f".features.tmp-{dead}-a1"), Path("models/.pruned.tmp-old")]
    running = Path(f"models/.accelerated.tmp-{os.getpid()}-q2")
    for folder in (*stale, running):
        folder.mkdir(parents=True)
        (folder / "weights").write_text("half")
    run_stage("summary", lambda params, out: {"done": True}, Params(), None, ())
    assert [folder for folder in stale if folder.exists()] == [] and running.is_dir()
    assert json.loads((tmp_path / "reports" / "summary.json").read_text())["done"] is True
