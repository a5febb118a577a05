"""The README's results table, one row per artifact, generated from committed files:

    python docs/results_table.py           # print the table
    python docs/results_table.py --write   # replace it in README.md (between the results markers)

A row's F1 and latency come from the same run: the CPU default's scores file, or a GPU pipeline run's
reports as committed under docs/results/. A run whose benchmark has the 2x2 matrix adds a second
table, what each factor buys. A shape benchmark (benchmarks/engine_gpu_run.sh: random weights, no F1)
gets a table of its own, captioned as such. A speedup or factor with an interval is shown with it,
and one whose interval is wider than the benchmark's limit is marked: not a result.
tests/test_results_table.py fails while README.md differs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.timing import TRUSTED_HALF_WIDTH  # noqa: E402  (the benchmark's limit on an interval)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BEGIN, END = "<!-- results:begin (docs/results_table.py) -->", "<!-- results:end -->"
VARIANTS = ("dense", "pruned", "sparse", "accelerated")
# The GPU pipeline runs, each a folder of its stage reports (gpu/reports as the run left them).
GPU_RUNS = ("docs/results/2026-12-06-gpu-pipeline-h100-4f602f1",)
HEADER = ("| run | model, data | device | F1 dense / pruned / 2:4 / accelerated | "
          "latency dense → accelerated, batch 16 / 64 / 256 | speedup |\n|---|---|---|---|---|---|")
# Shape benchmarks, each folder the $OUT of benchmarks/engine_gpu_run.sh (benchmark.json wraps the report).
SHAPE_RUNS = ("docs/results/2026-12-07-engine-matrix-h100-cslt010",)
# stages/benchmark.py's factors, in column order; a table shows those its reports have ("2:4 and 8-bit",
# against fp16 dense at its fastest, came with the GELU-epilogue dense model)
FACTORS = ("2:4 and 8-bit", "2:4 at fp16", "2:4 at 8-bit", "8-bit at dense", "8-bit at 2:4")
# The probe that found the fp16 dense baseline without cuBLASLt's GELU epilogue: cited under a report without it.
GELU_PROBE = "docs/results/2026-12-07-probe-gelu-epilogue-h100"


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def f1_cell(f1: dict) -> str:
    return " / ".join(f"{f1[variant]:.2f}" for variant in VARIANTS)


def cpu_row() -> str:
    scores = read(ROOT / "metrics/scores.json")
    return (f"| CPU default, `dvc repro` ([metrics/scores.json](metrics/scores.json)) | MiniLM-L6, synthetic "
            f"biographies (data/embedded) | x86-64 CPU, fp32 (another make moves the figures: "
            f"[docs/pipeline.md](docs/pipeline.md)) | {f1_cell(scores['f1'])} | n/a: no 2:4 kernels on a CPU | n/a |")


def figure(interval: dict | None) -> str:
    """A speedup or factor with its interval; one whose interval the benchmark did not trust is marked."""
    if interval is None:
        return "n/a"
    text = f"{interval['median']:.2f}x [{interval['low']:.2f}-{interval['high']:.2f}]"
    return text if interval["trusted"] else f"{text}, not a result"


def speedup_cell(benchmark: dict, key: str) -> str:
    """A batch size's compiled speedup: with its interval, or in a report from before intervals with
    the lowest and highest of its rounds' ratios, marked where they reach past the interval's limit
    (a range is wider than an interval, so what passes would pass with one)."""
    if "speedup_interval" in benchmark:
        return figure(benchmark["speedup_interval"][key]["compiled"])
    low, high = benchmark["speedup_range"][key]["compiled"]
    median = benchmark["speedup"][key]["compiled"]
    text = f"{median:.2f}x ({low:.2f}-{high:.2f})"
    return text if max(median - low, high - median) <= TRUSTED_HALF_WIDTH * median else f"{text}, not a result"


def gpu_row(run: str) -> str:
    folder = ROOT / run
    evaluation, benchmark = read(folder / "evaluate.json"), read(folder / "benchmark.json")
    tokenize = read(folder / "tokenize.json")
    f1 = {variant: evaluation[variant]["f1"] for variant in VARIANTS}
    device = benchmark["device"]
    latency = benchmark["latency_ms"]
    sizes = [key for key in ("bs16", "bs64", "bs256") if "accelerated_compiled" in latency.get(key, {})]
    times = " / ".join(f"{latency[key]['dense_compiled']:.2f} → {latency[key]['accelerated_compiled']:.2f} ms"
                       for key in sizes)
    speedups = " / ".join(speedup_cell(benchmark, key) for key in sizes)
    return (f"| GPU pipeline, `dvc repro gpu/dvc.yaml` ([{Path(run).name}]({run})) | MiniLM-L6, SQuAD v1.1 "
            f"({tokenize['train_examples']:,} train / {tokenize['validation_examples']:,} dev questions) | "
            f"{device['gpu']}, cuSPARSELt {device['cusparselt']}, compiled + CUDA graphs | {f1_cell(f1)} | {times} | "
            f"{speedups} |")


def shown_factors(reports) -> list[str]:
    """The factors (FACTORS' order) that some batch size of these benchmark reports has."""
    return [factor for factor in FACTORS
            if any(factor in (factors or {}) for report in reports for factors in report.get("factors", {}).values())]


def factor_cells(factors: dict, shown: list[str]) -> str:
    """A batch size's factors, the `shown` ones, as table cells."""
    return " | ".join(figure(factors.get(factor)) for factor in shown)


def without_epilogue(report: dict, variant: str) -> bool:
    """Whether a report's matrix went without the dense epilogue `variant` (reports before it, or a
    library that refused it)."""
    return bool(report.get("matrix")) and not any(f"{variant}_compiled" in row for row in report["latency_ms"].values())


def epilogue_caveats(reports) -> list[str]:
    """Bullets under a matrix on where its dense cells apply GELU: fp16 dense as a kernel of its own
    (reports before the GELU-epilogue dense model), 8-bit dense likewise before cuBLASLt's fp8 epilogue."""
    reports = list(reports)
    caveats = []
    if any(without_epilogue(report, "dense_gelu") for report in reports):
        caveats.append("- fp16 dense ran each GELU as a kernel of its own, where the accelerated model applies it in "
                       f"its matmuls' epilogue, as cuBLASLt can for fp16 dense too ([the probe]({GELU_PROBE})): these "
                       "speedups overstate what 2:4 and 8-bit buy.")
    if any(without_epilogue(report, "dense_fp8_epilogue") and "8-bit dense" in cells
           for report in reports for cells in report.get("matrix", {}).values()):
        caveats.append("- 8-bit dense ran GELU and the cast to 8 bits as kernels of their own (torch's `_scaled_mm` and "
                       f"`_int_mm` take no epilogue; cuBLASLt's fp8 matmul can: [the probe]({GELU_PROBE})): \"2:4 at 8-bit\" "
                       "counts that fusion as 2:4's.")
    return [""] + caveats if caveats else []


def factor_table(runs) -> str | None:
    """A row per run and batch size with the matrix's factors (None when no run has them)."""
    reports = {run: read(ROOT / run / "benchmark.json") for run in runs}
    shown = shown_factors(reports.values())
    rows = [f"| [{Path(run).name}]({run}) | {key.removeprefix('bs')} | {factor_cells(factors, shown)} |"
            for run, report in reports.items() for key, factors in report.get("factors", {}).items()]
    if not rows:
        return None
    caption = "What each factor buys, compiled (the median of the rounds' ratios, [its 95% interval]):"
    return "\n".join([caption, "", f"| run | batch | {' | '.join(shown)} |", f"|---|---|{'---|' * len(shown)}", *rows,
                      *epilogue_caveats(reports.values())])


def shape_table(run: str) -> str:
    """A shape benchmark's speedups and factors per batch size, captioned with what its weights are."""
    report = read(ROOT / run / "benchmark.json")
    benchmark = report["benchmark"]
    device = benchmark["device"]
    shown = shown_factors([benchmark])
    rows = [f"| {key.removeprefix('bs')} | {figure(speedups.get('compiled'))} | {figure(speedups.get('eager'))} | "
            f"{factor_cells(benchmark['factors'][key], shown)} |" for key, speedups in benchmark["speedup_interval"].items()]
    return "\n".join([
        f"A bert-base shape ([{Path(run).name}]({run}); {report['model']}), {device['gpu']}, cuSPARSELt "
        f"{device['cusparselt']}: accelerated against unpruned dense fp16, and what each factor buys, compiled "
        f"(the median of the rounds' ratios [its 95% interval]):", "",
        f"| batch | accelerated, compiled | accelerated, eager | {' | '.join(shown)} |",
        f"|---|---|---|{'---|' * len(shown)}", *rows, *epilogue_caveats([benchmark])])


def table() -> str:
    main = "\n".join([HEADER, cpu_row(), *(gpu_row(run) for run in GPU_RUNS)])
    factors = factor_table(GPU_RUNS)
    parts = [main, *([factors] if factors else []), *(shape_table(run) for run in SHAPE_RUNS)]
    return "\n\n".join(parts)


def with_table(readme: str) -> str:
    begin, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    return f"{readme[:begin]}\n{table()}\n{readme[end:]}"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        README.write_text(with_table(README.read_text()))
    else:
        print(table())
