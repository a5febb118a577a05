"""DVC stage `train_baseline`: features + model -> models/baseline (dense, fine-tuned)."""
from pathlib import Path

from flows.common import main, stage_flow
from stages.train_baseline import train_baseline

train_baseline_flow = stage_flow(
    "train_baseline",
    lambda params, out: train_baseline(params, Path("features"), out),
    out="models/baseline",
    plots=("loss_history",),
)

if __name__ == "__main__":
    main(train_baseline_flow)
