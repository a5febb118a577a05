"""What int8 2:4 kernels can buy over dense fp8 at bert-base's Linear shapes on the H100, kernel by kernel:
an estimate from two committed runs, no GPU needed.

- the tuned plan's kernel timings (2026-12-07-engine-matrix-h100-cslt010/accelerate.json, cuSPARSELt 0.10,
  the best of the configs its tuning timed) give each 2:4 kernel against dense fp16 (cuBLAS) in that run;
- the fp8 probe (2026-12-06-probe-fp8-2to4-h100/rows.log, the same H100 type) gives dense fp8 (fast
  accumulation) against dense fp16 at the same shapes and batch sizes.
Dense fp8 in the first run is estimated as its dense fp16 time times the probe's fp8/fp16 ratio (two runs:
an estimate, not a measurement). From the repository root: python docs/results/estimate-8bit-2to4-ceiling.py"""
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent
plan = json.loads((RESULTS / "2026-12-07-engine-matrix-h100-cslt010" / "accelerate.json").read_text())["plan"]
probe = [json.loads(line) for line in (RESULTS / "2026-12-06-probe-fp8-2to4-h100" / "rows.log").read_text().splitlines()]
probe_ms = {(row["shape"].split()[-1], row["batch"], row["kernel"]): row["ms"] for row in probe if "ms" in row}

print("| 2:4 kernel | weight (out x in) | batch | vs dense fp16 (measured) | vs dense fp8 (estimated) |")
print("|---|---|---|---|---|")
for precision, shapes in plan["shape_timings"].items():
    for shape, per_batch in shapes.items():
        for batch, timing in per_batch.items():
            key = (shape, int(batch))
            if not timing["sparse_ms"] or (*key, "dense_fp8") not in probe_ms:
                continue
            best = min(timing["sparse_ms"].values())
            fp8_ms = timing["dense_ms"] * probe_ms[(*key, "dense_fp8")] / probe_ms[(*key, "dense_fp16")]
            print(f"| {precision} | {shape} | {batch} | {timing['dense_ms'] / best:.2f}x | {fp8_ms / best:.2f}x |")
