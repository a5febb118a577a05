"""DVC stage `finetune_sparse`: models/pruned -> models/sparse (fine-tuned with the masks held)."""
from flows.cli import stage_arguments

ARGS = stage_arguments(__name__, __doc__)  # before torch and Prefect load: --help answers at once

from pathlib import Path  # noqa: E402

from flows.common import StageFlow, main  # noqa: E402
from stages.finetune_sparse import finetune_sparse  # noqa: E402

finetune_sparse_flow = StageFlow(
    "finetune_sparse",
    lambda params, out: finetune_sparse(params, Path("features"), Path("models/pruned"), out),
    out="models/sparse",
    plots=("loss_history",),
)

if __name__ == "__main__":
    main(finetune_sparse_flow, ARGS)
