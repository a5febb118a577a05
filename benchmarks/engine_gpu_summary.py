"""The GPU run's figures against issue #18's targets, from the JSON files benchmarks/engine_gpu_run.sh
left in one directory (any of them may be missing: a step that failed or ran out of time).

    python benchmarks/engine_gpu_summary.py OUT_DIR      # prints the table, writes OUT_DIR/summary.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

# issue #18: accelerated vs dense fp16 and dense fp8 (compiled, CUDA graphs), the request stream, eager
TARGETS = {"vs_fp16": {16: 1.25, 64: 1.50, 256: 1.50}, "vs_fp8": {16: 1.10, 64: 1.10, 256: 1.10}, "stream": 1.20,
           "eager": 0.9}


def read(directory: Path, name: str) -> dict:
    path = directory / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None


def summarize(directory: Path) -> dict:
    """Per batch size the speedups (the accelerate stage's own whole-model timing and the benchmark's),
    the stream's speedup, QA latency, and the cuSPARSELt versions, each beside its target."""
    accelerate, bench = read(directory, "accelerate.json"), read(directory, "benchmark.json").get("benchmark", {})
    plan = accelerate.get("plan", {})
    by_batch = {}
    for batch, target in TARGETS["vs_fp16"].items():
        model_ms = plan.get("model_ms", {}).get(str(batch), {})
        chosen = plan.get("variants", {}).get(str(batch))
        latency = bench.get("latency_ms", {}).get(f"bs{batch}", {})
        by_batch[f"bs{batch}"] = {
            "variant": chosen,
            "accelerate_vs_fp16": ratio(model_ms.get("dense_masked"), model_ms.get(chosen)),
            "benchmark_vs_fp16": ratio(latency.get("dense_compiled"), latency.get("accelerated_compiled")),
            "benchmark_vs_fp8": ratio(latency.get("dense_fp8_compiled"), latency.get("accelerated_compiled")),
            "eager_vs_fp16_eager": ratio(latency.get("dense_eager"), latency.get("accelerated_eager")),
            "target_vs_fp16": target, "target_vs_fp8": TARGETS["vs_fp8"][batch], "target_eager": TARGETS["eager"],
        }
    stream, qa, versions = read(directory, "stream.json"), read(directory, "qa.json"), read(directory, "versions.json")
    return {
        "cusparselt": versions.get("cusparselt"),
        "plan_cache": versions.get("plan_cache"),
        "cusparselt_0.8_probe": {precision: read(directory, "cusparselt-0.8.json").get(precision)
                                 for precision in ("fp16", "int8")},
        "tuning": plan.get("tuning"),
        "output_relative_error": accelerate.get("accelerate", {}).get("output_relative_error"),
        "by_batch": by_batch,
        "stream": {"speedup": stream.get("speedup"), "target": TARGETS["stream"],
                   "tokens_per_s": stream.get("tokens_per_s"), "relative_error": stream.get("relative_error"),
                   "within_bound": stream.get("within_bound")},
        "qa_median_ms": {name: qa.get(name, {}).get("median_of_medians_ms") for name in ("accelerated", "dense")},
    }


def main(argv: list[str] | None = None) -> None:
    directory = Path((argv or sys.argv[1:])[0])
    summary = summarize(directory)
    (directory / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"cuSPARSELt: {summary['cusparselt']}")
    print(f"tuning: {summary['tuning']}")
    print(f"plan cache: {summary['plan_cache']}")
    print("batch  variant     accelerate_vs_fp16  benchmark_vs_fp16  benchmark_vs_fp8  eager_vs_fp16   (targets)")
    for batch, row in summary["by_batch"].items():
        print(f"{batch:<6} {str(row['variant']):<11} {str(row['accelerate_vs_fp16']):>18} "
              f"{str(row['benchmark_vs_fp16']):>18} {str(row['benchmark_vs_fp8']):>16} "
              f"{str(row['eager_vs_fp16_eager']):>14}   "
              f"({row['target_vs_fp16']} / {row['target_vs_fp8']} / {row['target_eager']})")
    print(f"stream: x{summary['stream']['speedup']} (target {TARGETS['stream']}), {summary['stream']['tokens_per_s']}, "
          f"outputs within bound: {summary['stream']['within_bound']}")
    print(f"QA median latency per question (ms): {summary['qa_median_ms']}")
    print(f"output relative error: {summary['output_relative_error']}")


if __name__ == "__main__":
    main()
