"""The Prefect API server of one run: shared by the stages of a `dvc repro`, gone when the run is.

With no PREFECT_API_URL, each stage used to start Prefect's own ephemeral server: a start-up paid by
every stage, a start-up timeout that failed stages on a loaded machine, and a server left running for good
when the stage was SIGKILLed. Instead the first stage of a run starts this server for the run's
owner: the `dvc` process it runs under (or, run by hand, the stage itself); the run's later stages
find it through a file in $PREFECT_HOME/twofour-servers/ and connect to it. The server watches its
owner and exits once the owner is gone, whatever signal ended it; a stage that owns its server
also takes it down at once through PR_SET_PDEATHSIG. It keeps Prefect's database
($PREFECT_HOME/prefect.db), so `prefect server start` shows these runs later.

    python -m flows.server OWNER_PID PORT     # started by api_url(), not by hand
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil

# A loaded machine's server can take longer to answer than Prefect's own start-up limit allows.
STARTUP_TIMEOUT_S = 300
OWNER_POLL_S = 0.5
PR_SET_PDEATHSIG = 1
# Checks a client of this server can skip, each a request per Prefect client (a stage has three):
# the server runs this same Prefect, and without CSRF protection (serve() makes sure).
CLIENT_ENV = {"PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED": "false", "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "false"}
# The run's server has no UI and is gone with the run: a stage's "View at" link names the UI that
# `prefect server start` serves from the same database (the README's command) instead.
LASTING_UI_URL = "http://127.0.0.1:4200"


def servers_dir() -> Path:
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()
    return home / "twofour-servers"


def run_owner() -> psutil.Process:
    """The nearest `dvc` process above this one (the run), else this process."""
    for ancestor in psutil.Process().parents():
        with contextlib.suppress(psutil.Error):
            command = ancestor.cmdline()
            if any(Path(part).name == "dvc" for part in command[:3]):
                return ancestor
    return psutil.Process()


def start_ticks(pid: int) -> int:
    """When the process started, in clock ticks since boot (/proc/PID/stat's 22nd field). Unlike
    create_time(), which adds the boot time as the wall clock now puts it, it cannot move when the clock
    is adjusted: two stages of one run must name their owner's state file alike."""
    after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(after_name[19])  # fields from the 3rd on: the 22nd is the 20th here


def state_file(owner: psutil.Process) -> Path:
    # the start time tells a reused process id from the owner
    return servers_dir() / f"{owner.pid}-{start_ticks(owner.pid)}.json"


def is_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def is_running(pid: int) -> bool:
    """Alive and not a zombie: a server that died as this process's child stays one until reaped."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    """In the child, before exec: the kernel sends it SIGKILL when the process that started it ends."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def start(owner: psutil.Process, log: Path) -> dict:
    port = free_port()
    owned_by_us = owner.pid == os.getpid()
    with open(log, "ab") as output:
        # A session of its own: a terminal's Ctrl-C, sent to its whole foreground group, stops the stage, not
        # the server the stage still reports its stop to; the server goes with its owner (watch, PDEATHSIG).
        process = subprocess.Popen([sys.executable, "-m", "flows.server", str(owner.pid), str(port)],
                                   stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=die_with_parent if owned_by_us else None)
    return {"url": f"http://127.0.0.1:{port}/api", "pid": process.pid}


def api_url() -> str:
    """The URL of this run's server, started now if the run has none yet; waits until it answers."""
    owner = run_owner()
    servers_dir().mkdir(parents=True, exist_ok=True)
    path = state_file(owner)
    with open(servers_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one server per run, however many stages start at once
        for known in servers_dir().glob("*.json"):  # a server killed with its stage leaves its file
            if not is_running(json.loads(known.read_text())["pid"]):
                known.unlink()
        server = json.loads(path.read_text()) if path.exists() else None
        joined = server is not None
        if not joined:
            server = start(owner, servers_dir() / "server.log")
            path.write_text(json.dumps(server))
    logging.getLogger(__name__).info(f"{'joined' if joined else 'started'} the Prefect server of this run "
                                     f"(owner: process {owner.pid}) at {server['url']}")
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not is_healthy(server["url"]):
        if not is_running(server["pid"]) or time.monotonic() > deadline:
            path.unlink(missing_ok=True)
            raise RuntimeError(f"the Prefect server for this run did not start (see {servers_dir() / 'server.log'})")
        time.sleep(0.2)
    return server["url"]


def watch(owner: psutil.Process, stop) -> None:
    while owner.is_running():
        time.sleep(OWNER_POLL_S)
    stop()


def serve(owner_pid: int, port: int) -> None:
    """Prefect's API (as its ephemeral server runs it) on 127.0.0.1:port until the owner is gone."""
    os.environ.update(PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1", PREFECT_UI_ENABLED="0",
                      PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED="false",
                      # no telemetry heartbeat, and no automations to evaluate every few seconds
                      PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED="false")
    try:
        owner = psutil.Process(owner_pid)
        own_state = state_file(owner)
    except (psutil.NoSuchProcess, FileNotFoundError):
        return
    import uvicorn

    server = uvicorn.Server(uvicorn.Config("prefect.server.api.server:create_app", factory=True, host="127.0.0.1",
                                           port=port, log_level="error", lifespan="on"))

    def stop():
        server.should_exit = True
        time.sleep(10)  # a clean shutdown takes well under this
        os._exit(0)

    threading.Thread(target=watch, args=(owner, stop), daemon=True).start()
    server.run()
    own_state.unlink(missing_ok=True)


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
