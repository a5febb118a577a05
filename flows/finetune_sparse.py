"""DVC stage `finetune_sparse`: models/pruned -> models/sparse (fine-tuned with the masks held)."""
from pathlib import Path

from flows.common import main, stage_flow
from stages.finetune_sparse import finetune_sparse

finetune_sparse_flow = stage_flow(
    "finetune_sparse",
    lambda params, out: finetune_sparse(params, Path("features"), Path("models/pruned"), out),
    out="models/sparse",
    plots=("loss_history",),
)

if __name__ == "__main__":
    main(finetune_sparse_flow)
