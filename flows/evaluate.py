"""DVC stage `evaluate`: exact match and F1 of every model variant on the validation split."""
from pathlib import Path

from flows.common import main, stage_flow
from stages.evaluate import evaluate

MODEL_DIRS = {
    "dense": Path("models/baseline"),
    "pruned": Path("models/pruned"),
    "sparse": Path("models/sparse"),
    "accelerated": Path("models/accelerated"),
}

evaluate_flow = stage_flow("evaluate", lambda params, out: evaluate(params, Path("features"), MODEL_DIRS))

if __name__ == "__main__":
    main(evaluate_flow)
