"""DVC stage `evaluate`: exact match and F1 of every model variant on the validation split."""
from flows.cli import stage_arguments

ARGS = stage_arguments(__name__, __doc__)  # before torch and Prefect load: --help answers at once

from pathlib import Path  # noqa: E402

from engine.runtime import load_cusparselt  # noqa: E402

load_cusparselt()  # $TWOFOUR_CUSPARSELT (engine/runtime.py), before anything imports torch

from flows.common import StageFlow, main  # noqa: E402
from stages.evaluate import VARIANTS, evaluate  # noqa: E402

MODEL_DIRS = {
    "dense": Path("models/baseline"),
    "pruned": Path("models/pruned"),
    "sparse": Path("models/sparse"),
    "accelerated": Path("models/accelerated"),
}


def variant_table(metrics: dict) -> list[dict]:
    """The Prefect artifact: the variants side by side."""
    return [{"variant": name, **metrics[name]} for name in VARIANTS if name in metrics]


evaluate_flow = StageFlow("evaluate", lambda params, out: evaluate(params, Path("features"), MODEL_DIRS),
                           table=variant_table)

if __name__ == "__main__":
    main(evaluate_flow, ARGS)
