"""DVC stage `accelerate`: models/sparse -> models/accelerated (model + per-layer kernel plan)."""
from flows.cli import stage_arguments

ARGS = stage_arguments(__name__, __doc__)  # before torch and Prefect load: --help answers at once

from pathlib import Path  # noqa: E402

from engine.runtime import load_cusparselt  # noqa: E402

load_cusparselt()  # $TWOFOUR_CUSPARSELT (engine/runtime.py), before anything imports torch

from flows.common import StageFlow, main  # noqa: E402
from stages.accelerate import run  # noqa: E402

accelerate_flow = StageFlow("accelerate", lambda params, out: run(params, Path("models/sparse"), out, Path("features")),
                             out="models/accelerated")

if __name__ == "__main__":
    main(accelerate_flow, ARGS)
