"""DVC stage `accelerate`: models/sparse -> models/accelerated (model + per-layer kernel plan)."""
from pathlib import Path

from engine.runtime import load_cusparselt

load_cusparselt()  # $TWOFOUR_CUSPARSELT (engine/runtime.py), before anything imports torch

from flows.common import main, stage_flow  # noqa: E402
from stages.accelerate import run  # noqa: E402

accelerate_flow = stage_flow("accelerate", lambda params, out: run(params, Path("models/sparse"), out, Path("features")),
                             out="models/accelerated")

if __name__ == "__main__":
    main(accelerate_flow)
