"""A stage flow's command line, parsed before the heavy imports (torch, Prefect): each
flows/<stage>.py calls `stage_arguments` first, so `--help` and a wrong argument answer at once."""
from __future__ import annotations

import argparse
import sys


def stage_arguments(module: str, doc: str | None, argv: list[str] | None = None) -> argparse.Namespace | None:
    """The parsed arguments when `module` (the caller's __name__) runs as the command, else None."""
    if module != "__main__":
        return None
    stage = sys.modules["__main__"].__spec__.name.rsplit(".", 1)[1]
    parser = argparse.ArgumentParser(prog=f"python -m flows.{stage}", description=doc)
    parser.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    return parser.parse_args(argv)
