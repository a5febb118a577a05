"""DVC stage `prune`: models/baseline -> models/pruned (2:4 masks baked in: the weights' zeros)."""
from flows.cli import stage_arguments

ARGS = stage_arguments(__name__, __doc__)  # before torch and Prefect load: --help answers at once

from pathlib import Path  # noqa: E402

from flows.common import StageFlow, main  # noqa: E402
from stages.prune import prune  # noqa: E402

prune_flow = StageFlow("prune", lambda params, out: prune(params, Path("models/baseline"), out), out="models/pruned")

if __name__ == "__main__":
    main(prune_flow, ARGS)
