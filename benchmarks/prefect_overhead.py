"""Per-stage Prefect overhead: a stage that does nothing, run as a stage flow and without Prefect.

Both are whole `python` processes in a scratch project (a copy of params.yaml). The flow reports to
this run's server (flows/server.py), started once here as the first stage of a `dvc repro` starts
it; the figure is the difference of the two medians. Also printed: how long the server took to
start (with a new database unless PREFECT_HOME names one), and how long a later stage takes to find
it (flows.server.api_url, in this process).

    python benchmarks/prefect_overhead.py            # 5 runs of each, alternating
    python benchmarks/prefect_overhead.py --runs 9
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTHING = {"noop": 1}


def stage_without_prefect() -> None:
    """What every stage does besides its work and Prefect: read params, collect run facts, write metrics."""
    from stages.common import run_facts, write_json
    from stages.params import load_params

    load_params("params.yaml")
    with run_facts() as facts:
        metrics = dict(NOTHING)
    write_json("metrics/noop.json", {**metrics, "run": facts})


def stage_as_flow() -> None:
    from flows.common import StageFlow, main

    sys.argv[1:] = []  # the stage's own command line: no options
    main(StageFlow("noop", lambda params, out: dict(NOTHING)))


def timed_run(mode: str, cwd: Path, env: dict) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child", mode], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs of each kind (default: 5)")
    parser.add_argument("--child", choices=["flow", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.child:
        stage_as_flow() if args.child == "flow" else stage_without_prefect()
        return

    from flows import server
    from flows.common import use_run_server

    with tempfile.TemporaryDirectory(prefix="prefect-overhead-") as tmp:
        project = Path(tmp)
        shutil.copyfile(REPO / "params.yaml", project / "params.yaml")
        os.environ.setdefault("PREFECT_HOME", str(project / "prefect-home"))
        os.environ.pop("PREFECT_API_URL", None)
        started = time.perf_counter()
        use_run_server()  # this process owns the server: it stops when this process ends
        server_start = time.perf_counter() - started
        lookups = []
        for _ in range(args.runs):
            started = time.perf_counter()
            server.api_url()
            lookups.append(time.perf_counter() - started)
        env = dict(os.environ, PYTHONPATH=str(REPO))  # the URL, as flows/pipeline.py passes it on
        timed_run("flow", project, env)  # warm-up: Prefect creates the flow, the OS caches the files
        times = {"flow": [], "plain": []}
        for _ in range(args.runs):
            for mode in times:
                times[mode].append(timed_run(mode, project, env))
    flow, plain = (statistics.median(times[mode]) for mode in ("flow", "plain"))
    print(f"load average {os.getloadavg()[0]:.2f}; {args.runs} runs each, medians (min-max)")
    for mode, label in (("plain", "stage without Prefect"), ("flow", "stage as a Prefect flow")):
        print(f"{label:28s} {statistics.median(times[mode]):6.2f} s ({min(times[mode]):.2f}-{max(times[mode]):.2f})")
    print(f"{'Prefect overhead per stage':28s} {flow - plain:6.2f} s")
    print(f"{'finding the run server':28s} {statistics.median(lookups):6.2f} s (more, in a stage under `dvc repro`)")
    print(f"{'starting the run server':28s} {server_start:6.2f} s (once per run, in its first stage)")


if __name__ == "__main__":
    main()
