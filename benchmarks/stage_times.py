"""Time every stage of the pipeline: `dvc repro --force --single-item <stage>`, one after another.

Prints, per stage, the whole command's wall time (Python start-up, imports, Prefect, DVC hashing
included) beside the stage's own work time (run.wall_s in reports/<stage>.json); the difference
is the orchestration overhead. Run from the repository root:

    python benchmarks/stage_times.py            # all stages
    python benchmarks/stage_times.py prune      # some
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml


def stages() -> list[str]:
    return list(yaml.safe_load(Path("dvc.yaml").read_text())["stages"])


def main(selected: list[str]) -> None:
    rows = []
    for stage in selected or stages():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dvc", "repro", "--force", "--single-item", stage],
                       check=True, stdout=subprocess.DEVNULL)
        total = time.perf_counter() - start
        work = json.loads(Path(f"reports/{stage}.json").read_text())["run"]["wall_s"]
        rows.append((stage, total, work))
        print(f"{stage:16s} {total:8.1f} s total {work:8.1f} s work {total - work:6.1f} s overhead", flush=True)
    total, work = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'all':16s} {total:8.1f} s total {work:8.1f} s work {total - work:6.1f} s overhead")


if __name__ == "__main__":
    main(sys.argv[1:])
