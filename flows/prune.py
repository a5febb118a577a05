"""DVC stage `prune`: models/baseline -> models/pruned (2:4 masks baked in: the weights' zeros)."""
from pathlib import Path

from flows.common import main, stage_flow
from stages.prune import prune

prune_flow = stage_flow("prune", lambda params, out: prune(params, Path("models/baseline"), out), out="models/pruned")

if __name__ == "__main__":
    main(prune_flow)
