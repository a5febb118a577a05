"""DVC stage `benchmark`: dense vs accelerated latency per batch size, eager and compiled."""
from flows.cli import stage_arguments

ARGS = stage_arguments(__name__, __doc__)  # before torch and Prefect load: --help answers at once

from pathlib import Path  # noqa: E402

from engine.runtime import load_cusparselt  # noqa: E402

load_cusparselt()  # $TWOFOUR_CUSPARSELT (engine/runtime.py), before anything imports torch

from flows.common import StageFlow, main  # noqa: E402
from stages.benchmark import benchmark, latency_frame  # noqa: E402


def batch_table(metrics: dict) -> list[dict]:
    """The Prefect artifact: per batch size, each latency (ms) and the speedups."""
    return latency_frame(metrics).reset_index().to_dict("records")


def work(params, out_dir):
    return benchmark(params, Path("models/baseline"), Path("models/accelerated"))


benchmark_flow = StageFlow("benchmark", work, table=batch_table)

if __name__ == "__main__":
    main(benchmark_flow, ARGS)
