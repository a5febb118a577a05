"""DVC stage `train_baseline`: features + model -> models/baseline (dense, fine-tuned)."""
from flows.cli import stage_arguments

ARGS = stage_arguments(__name__, __doc__)  # before torch and Prefect load: --help answers at once

from pathlib import Path  # noqa: E402

from flows.common import StageFlow, main  # noqa: E402
from stages.train_baseline import train_baseline  # noqa: E402

train_baseline_flow = StageFlow(
    "train_baseline",
    lambda params, out: train_baseline(params, Path("features"), out),
    out="models/baseline",
    plots=("loss_history",),
)

if __name__ == "__main__":
    main(train_baseline_flow, ARGS)
