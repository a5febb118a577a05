"""DVC stage `accelerate`: models/sparse -> models/accelerated (model + per-layer kernel plan)."""
from pathlib import Path

from flows.common import main, stage_flow
from stages.accelerate import run

accelerate_flow = stage_flow("accelerate", lambda params, out: run(params, Path("models/sparse"), out, Path("features")),
                             out="models/accelerated")

if __name__ == "__main__":
    main(accelerate_flow)
