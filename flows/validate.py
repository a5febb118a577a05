"""DVC stage `validate`: params.yaml and the data files it names, checked before any other stage
runs (stages/validate.py); writes reports/validate.json, the same bytes for any valid params.

A plain command, not a Prefect flow: it must answer in well under a second and fail for nothing
but its input. On failure nothing has been removed: its stamp is a persistent DVC out."""
import json
import os
import sys
from pathlib import Path

from flows.cli import stage_arguments
from stages.params import ParamError, load_params
from stages.validate import validate_inputs

STAMP = Path("reports/validate.json")
UNDO = "nothing was removed: fix it, or `git checkout params.yaml` to go back"


def main() -> int:
    args = stage_arguments(__name__, __doc__)
    try:
        stamp = validate_inputs(load_params(args.params), source=args.params)
    except ParamError as err:
        print(f"twofour validate: error: {err}; {UNDO}", file=sys.stderr)
        return 1
    STAMP.parent.mkdir(parents=True, exist_ok=True)
    partial = STAMP.with_name(f".{STAMP.name}.{os.getpid()}")
    partial.write_text(json.dumps(stamp, indent=2) + "\n")
    partial.replace(STAMP)
    return 0


if __name__ == "__main__":
    sys.exit(main())
