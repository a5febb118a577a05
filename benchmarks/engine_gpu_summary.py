"""The GPU run's figures against issue #30's targets, from the JSON files benchmarks/engine_gpu_run.sh
left in one directory (any of them may be missing: a step that failed or ran out of time).

    python benchmarks/engine_gpu_summary.py OUT_DIR      # prints the table, writes OUT_DIR/summary.json

Every speed figure is the benchmark's (interleaved rounds, median ratio with its bootstrap interval);
the accelerate step's own whole-model ratio (the planner's timing) is shown beside it, named.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

# issue #30, per batch size: figure -> target (a ratio, the faster over the slower)
TARGETS = {
    # accelerated (8-bit 2:4) vs unpruned dense fp16 at its fastest (with cuBLASLt's GELU epilogue where faster)
    "2:4 and 8-bit": {16: 1.45, 64: 2.00, 256: 2.00},
    "2:4 at 8-bit": {64: 1.30, 256: 1.30},  # 8-bit 2:4 vs the best 8-bit dense
    "2:4 at fp16": {256: 1.40},
    "speedup eager": {16: 1.00},  # never slower than dense
}
BATCH_SIZES = (16, 64, 256)


def read(directory: Path, name: str) -> dict:
    path = directory / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None


def figure(interval: dict | None, target: float | None) -> dict | None:
    """One figure: its median, interval and trust (stages/benchmark.py), its target, and whether the
    median reaches the target (None where there is no target or the interval is not trusted)."""
    if interval is None:
        return None
    row = {key: interval.get(key) for key in ("median", "low", "high", "trusted")} | {"target": target}
    row["meets_target"] = None if target is None or not interval.get("trusted") else interval["median"] >= target
    return row


def summarize(directory: Path) -> dict:
    """Per batch size the benchmark's figures with intervals beside issue #30's targets, the 2x2
    matrix's cells (ms), the planner's own ratio, and the run's versions, stream and QA latency."""
    accelerate, bench = read(directory, "accelerate.json"), read(directory, "benchmark.json").get("benchmark", {})
    plan = accelerate.get("plan", {})
    by_batch = {}
    for batch in BATCH_SIZES:
        key = f"bs{batch}"
        intervals = {f"speedup {mode}": interval
                     for mode, interval in bench.get("speedup_interval", {}).get(key, {}).items()}
        intervals |= bench.get("factors", {}).get(key) or {}
        model_ms = plan.get("model_ms", {}).get(str(batch), {})
        chosen = plan.get("variants", {}).get(str(batch))
        by_batch[key] = {
            "variant": chosen,
            "planner_vs_masked_fp16": ratio(model_ms.get("dense_masked"), model_ms.get(chosen)),
            # what the GELU epilogue buys (the matrix has no cell without it): the planner's own timing
            "planner_epilogue": ratio(model_ms.get("int8_fused"), model_ms.get("int8_gelu")),
            "matrix_ms": {cell: row.get("ms") for cell, row in bench.get("matrix", {}).get(key, {}).items()},
            "figures": {name: figure(interval, TARGETS.get(name, {}).get(batch))
                        for name, interval in intervals.items()},
        }
    stream, qa, versions = read(directory, "stream.json"), read(directory, "qa.json"), read(directory, "versions.json")
    return {
        "cusparselt": versions.get("cusparselt"),
        "plan_cache": versions.get("plan_cache"),
        "cusparselt_0.8_probe": {precision: read(directory, "cusparselt-0.8.json").get(precision)
                                 for precision in ("fp16", "int8")},
        "tuning": plan.get("tuning"),
        "output_relative_error": accelerate.get("accelerate", {}).get("output_relative_error"),
        "matrix_absent": bench.get("matrix_absent"),
        "by_batch": by_batch,
        "stream": {"speedup": stream.get("speedup"), "tokens_per_s": stream.get("tokens_per_s"),
                   "relative_error": stream.get("relative_error"), "within_bound": stream.get("within_bound")},
        "qa_median_ms": {name: qa.get(name, {}).get("median_of_medians_ms") for name in ("accelerated", "dense")},
    }


def figure_text(row: dict | None) -> str:
    if row is None:
        return "n/a"
    text = f"x{row['median']:.3f} [{row['low']:.3f}, {row['high']:.3f}]"
    if not row["trusted"]:
        text += " (not a result: interval too wide)"
    if row["target"] is not None:
        text += f"  target {row['target']}: {'met' if row['meets_target'] else 'not met'}"
    return text


def main(argv: list[str] | None = None) -> None:
    directory = Path((argv or sys.argv[1:])[0])
    summary = summarize(directory)
    (directory / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"cuSPARSELt: {summary['cusparselt']}")
    print(f"tuning: {summary['tuning']}")
    print(f"plan cache: {summary['plan_cache']}")
    for batch, row in summary["by_batch"].items():
        print(f"{batch}: plan {row['variant']}, planner's own ratios: vs masked dense {row['planner_vs_masked_fp16']}, "
              f"int8_gelu vs int8_fused (the GELU epilogue) {row['planner_epilogue']}; matrix (ms) {row['matrix_ms']}")
        for name, value in row["figures"].items():
            print(f"  {name:<18} {figure_text(value)}")
    if summary["matrix_absent"]:
        print(f"matrix cells absent: {summary['matrix_absent']}")
    print(f"stream: x{summary['stream']['speedup']}, {summary['stream']['tokens_per_s']}, "
          f"outputs within bound: {summary['stream']['within_bound']}")
    print(f"QA median latency per question (ms): {summary['qa_median_ms']}")
    print(f"output relative error: {summary['output_relative_error']}")


if __name__ == "__main__":
    main()
