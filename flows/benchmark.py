"""DVC stage `benchmark`: dense vs accelerated latency per batch size, eager and compiled."""
from pathlib import Path

from engine.runtime import load_cusparselt

load_cusparselt()  # $TWOFOUR_CUSPARSELT (engine/runtime.py), before anything imports torch

from flows.common import main, stage_flow  # noqa: E402
from stages.benchmark import latency_frame, run  # noqa: E402


def latency_series(rows: list[dict]) -> list[dict]:
    """The latency plot's rows: one per batch size and series ("dense eager", ...), which
    .dvc/plots/latency_by_series.json draws as one coloured line per series."""
    return [{"batch_size": row["batch_size"], "series": f"{row['variant']} {row['mode']}",
             "latency_ms": row["latency_ms"]} for row in rows]


def work(params, out_dir):
    metrics, latency_rows = run(params, Path("models/baseline"), Path("models/accelerated"))
    return {**metrics, "latency": latency_series(latency_rows)}


def batch_table(metrics: dict) -> list[dict]:
    """The Prefect artifact: per batch size, each latency (ms) and the speedups."""
    return latency_frame(metrics).reset_index().to_dict("records")


benchmark_flow = stage_flow("benchmark", work, plots=("latency",), table=batch_table)

if __name__ == "__main__":
    main(benchmark_flow)
