"""DVC stage `benchmark`: dense vs accelerated latency per batch size, eager and compiled."""
from pathlib import Path

from flows.common import main, stage_flow
from stages.benchmark import run


def latency_table(rows: list[dict]) -> list[dict]:
    """One row per batch size, one column per variant_mode: the shape `dvc plots` draws as lines."""
    table: dict[int, dict] = {}
    for row in rows:
        entry = table.setdefault(row["batch_size"], {"batch_size": row["batch_size"]})
        entry[f"{row['variant']}_{row['mode']}"] = row["latency_ms"]
    return [table[b] for b in sorted(table)]


def work(params, out_dir):
    metrics, latency_rows = run(params, Path("models/baseline"), Path("models/accelerated"))
    return {**metrics, "latency": latency_table(latency_rows)}


def batch_table(metrics: dict) -> list[dict]:
    """The Prefect artifact: per batch size, each latency (ms) and the speedups."""
    return [{"batch_size": batch, **row, **{f"speedup_{mode}": s for mode, s in metrics["speedup"][batch].items()}}
            for batch, row in metrics["latency_ms"].items()]


benchmark_flow = stage_flow("benchmark", work, plots=("latency",), table=batch_table)

if __name__ == "__main__":
    main(benchmark_flow)
