"""A stage's command line: --help, one-line errors with the traceback in logs/<stage>.log, no
retry of bad input, and no Prefect server left behind by a stage killed with SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import psutil
import pytest
import yaml

from conftest import REPO, copy_project, make_project


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("cli-project"))


def stage(project, name, *args, timeout=600):
    root, env = project
    return subprocess.run([sys.executable, "-m", f"flows.{name}", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)


def set_params(root, **sections):
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_help_answers_without_running_the_stage(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "flows.prune", "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m flows.prune") and "models/pruned" in result.stdout
    assert list(tmp_path.iterdir()) == []  # no log, no metrics, no output


@pytest.mark.parametrize("flow", ["validate", "tokenize", "train_baseline", "evaluate", "pipeline"])
def test_help_comes_before_torch_and_prefect_are_imported(flow):
    """`-X importtime` lists every module imported: --help must answer before the heavy ones."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", f"flows.{flow}", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith(f"usage: python -m flows.{flow}")
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "prefect", "transformers", "pandas", "dvc"}, imported & {"torch", "prefect"}


def test_data_path_that_is_a_directory_is_one_line_and_not_retried(project):
    root, _ = project
    (root / "a-directory.json").mkdir(exist_ok=True)
    set_params(root, data={"dir": ".", "train_files": ["a-directory.json"]},
               orchestration={"retries": 2, "retry_delay_s": 30})
    try:
        started = time.monotonic()
        result = stage(project, "tokenize")
        took = time.monotonic() - started
    finally:
        set_params(root, data={"dir": "data/embedded", "train_files": ["biographies.json"]})
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("twofour tokenize: error: ") and "a-directory.json" in line and "directory" in line
    assert took < 60  # two retries would have waited 60 s
    log = (root / "logs/tokenize.log").read_text()
    assert "Retrying" not in log


def test_bad_params_fail_in_one_line(project):
    root, _ = project
    set_params(root, train={"learning_rate": float("inf")})
    try:
        result = stage(project, "train_baseline")
    finally:
        set_params(root, train={"learning_rate": 0.0002})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "twofour train_baseline: error: params.yaml: field 'train.learning_rate' = inf is invalid "
        "(expected int or float, a finite number)"]


def servers_in(root) -> list[psutil.Process]:
    """The run servers (flows/server.py) started from `root`."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        if "flows.server" in (process.info["cmdline"] or []) and process.info["cwd"] == str(root):
            found.append(process)
    return found


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_killed_stage_leaves_no_server(project, signum):
    root, env = project
    process = subprocess.Popen([sys.executable, "-m", "flows.tokenize"], cwd=root, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not servers_in(root):
        assert process.poll() is None and time.monotonic() < deadline, "no server was started"
        time.sleep(0.05)
    [server] = servers_in(root)
    process.send_signal(signum)
    process.wait(timeout=60)
    server.wait(timeout=15)  # raises psutil.TimeoutExpired if it outlives the stage
    assert not servers_in(root)


@pytest.mark.parametrize("to_group", [False, True], ids=["to the stage", "to its terminal's process group"])
def test_ctrl_c_stops_a_stage_in_one_line_and_leaves_no_server(pruned_project, tmp_path, to_group):
    """A terminal's Ctrl-C reaches every process of its foreground group: the stage's own server too."""
    root, env = copy_project(pruned_project, tmp_path / "project")
    set_params(root, train={"max_steps": 5000})  # still training when the signal comes
    process = subprocess.Popen([sys.executable, "-m", "flows.train_baseline"], cwd=root, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=to_group)
    deadline = time.monotonic() + 300
    while not list(root.glob(".checkpoints/*/checkpoint-*")):  # inside the training, past imports and server start
        assert process.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)
    if to_group:
        os.killpg(process.pid, signal.SIGINT)
    else:
        process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    log = (root / "logs/train_baseline.log").read_text()
    if to_group:  # its server left running, the stage ends on its own, not by exit_within's deadline
        assert "had not exited" not in log, log[-3000:]
    elif "had not exited" in log:  # a rare hang seen once in CI, now cut short: its stacks, for whoever reads
        warnings.warn(f"the stage needed exit_within's deadline to stop:\n{log[-3000:]}")
    assert process.returncode == 128 + signal.SIGINT, err
    # the last line on stderr, a line of its own after the training's progress bar
    assert err.strip().splitlines()[-1] == ("twofour train_baseline: interrupted: it published nothing, and a "
                                            "rerun starts it again (training from its last checkpoint)")
    assert "Traceback" not in err
    assert not servers_in(root)


def test_ctrl_c_ends_a_stage_whose_way_out_is_stuck(project):
    """After Ctrl-C the stage has EXIT_GRACE_S to end, whatever its way out waits for: here work that
    takes the KeyboardInterrupt and carries on, as a stuck crash report or thread would hold it."""
    root, env = project
    ready = root / "work-started"
    script = textwrap.dedent(f"""
        import time
        from argparse import Namespace
        from pathlib import Path
        from flows import common

        def work_that_ignores_ctrl_c(params, out):
            Path({str(ready)!r}).touch()
            while True:
                try:
                    time.sleep(0.1)
                except KeyboardInterrupt:
                    pass

        common.EXIT_GRACE_S = 2
        common.main(common.StageFlow("stuck", work_that_ignores_ctrl_c), Namespace(params="params.yaml"))
    """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=root, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the work did not start"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT, err
    assert err.strip().splitlines()[-1] == ("twofour stuck: interrupted: it published nothing, and a rerun starts "
                                            "it again (training from its last checkpoint)")
    log = (root / "logs/stuck.log").read_text()
    assert "the stage had not exited 2 s after it stopped" in log and "work_that_ignores_ctrl_c" in log


def test_a_runs_state_file_keeps_its_name_when_the_wall_clock_moves(monkeypatch):
    """Each stage names its run's state file from the owner's start: a name that moved with the clock
    (psutil's create_time adds the boot time as the clock now puts it) sent a later stage of the run to
    start a second server."""
    from flows import server

    owner = psutil.Process(os.getppid())
    name, started = server.state_file(owner), owner.create_time()
    since_boot = server.start_ticks(owner.pid) / os.sysconf("SC_CLK_TCK")
    assert since_boot == pytest.approx(started - psutil.boot_time(), abs=0.02)
    boot_time = psutil._pslinux.boot_time
    monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: boot_time() + 1.0)  # the clock stepped 1 s
    moved = psutil.Process(owner.pid)
    assert moved.create_time() == pytest.approx(started + 1.0)  # what the name used to be made of
    assert server.state_file(moved) == name


def test_stages_of_one_dvc_run_share_one_server_that_stops_with_the_run(project):
    root, env = project
    result = subprocess.run([sys.executable, "-m", "dvc", "repro", "--force", "tokenize", "train_baseline"],
                            cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = ((root / f"logs/{name}.log").read_text() for name in ("tokenize", "train_baseline"))
    url = first.split("started the Prefect server of this run", 1)[1].split(" at ", 1)[1].split()[0]
    assert "joined the Prefect server of this run" in second and f" at {url}" in second
    # the run's server is gone after the run: the link names the lasting UI over the same database
    assert "View at http://127.0.0.1:4200/runs/flow-run/" in second
    deadline = time.monotonic() + 15  # the server polls its owner twice a second
    while servers_in(root):
        assert time.monotonic() < deadline, "the run's server outlived `dvc repro`"
        time.sleep(0.2)


def test_a_stage_hashes_as_datasets_does_outside_prefect(project):
    """datasets' fingerprints (features/state.json) pickle an Arrow table through a nested function,
    whose globals dill finds by capturing dis.dis' printout: a flow whose prints became log lines
    broke that capture (and filled the log with disassembly)."""
    import pyarrow as pa
    from datasets.fingerprint import Hasher

    root, env = project
    script = ("import pyarrow as pa; from datasets.fingerprint import Hasher; "
              "from argparse import Namespace; from flows.common import StageFlow, main; "
              "main(StageFlow('fingerprint', lambda params, out: {'hash': Hasher.hash(pa.table({'a': [1, 2]}))}), "
              "Namespace(params='params.yaml'))")
    result = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads((root / "reports/fingerprint.json").read_text())["hash"] == Hasher.hash(pa.table({"a": [1, 2]}))
    assert "LOAD_GLOBAL" not in (root / "logs/fingerprint.log").read_text()
