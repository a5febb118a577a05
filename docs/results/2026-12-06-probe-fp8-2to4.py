"""Issue 30 lever probe: does torch's cuSPARSELt binding run fp8 (e4m3) 2:4, and what does it buy
against fp16 2:4, int8 2:4 and the 8-bit dense matmuls, on bert-base's Linear shapes at seq 384?

Kernel times only (each call replayed in a CUDA graph, engine.tuning.graph_time_ms; inputs rotated
past L2), random 2:4 weights: which kernel wins per shape, not a model's speed. Per 2:4 kind, the
faster of alg_id 0 and cuSPARSELt's own search.
    python docs/results/2026-12-06-probe-fp8-2to4.py > probe.json
"""
import json
import sys

import torch
import torch.nn.functional as F

from engine.tuning import graph_time_ms, rotation_count

SHAPES = {"qkv/out 768x768": (768, 768), "ffn up 3072x768": (3072, 768), "ffn down 768x3072": (768, 3072)}
BATCHES = (16, 64, 256)
SEQ = 384
FP8 = torch.float8_e4m3fn


def main() -> None:
    device = torch.device("cuda")
    report = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
              "cusparselt": torch.backends.cusparselt.version(), "rows": []}
    for label, (n, k) in SHAPES.items():
        for batch in BATCHES:
            for row in shape_rows(n, k, batch * SEQ, device):
                row = {"shape": label, "batch": batch, **row}
                report["rows"].append(row)
                print(json.dumps(row), file=sys.stderr)
            torch.cuda.empty_cache()
    print(json.dumps(report, indent=1))


def cslt_step(packed: list, inputs: list, bias: torch.Tensor, extra: dict, alg_id: int):
    return lambda i: torch._cslt_sparse_mm(packed[i % len(packed)], inputs[i % len(inputs)].t(), bias=bias,
                                           transpose_result=True, alg_id=alg_id, **extra)


def shape_rows(n: int, k: int, m: int, device: torch.device) -> list[dict]:
    """Each kernel's time for a (m, k) @ (k, n) problem, or why it did not run."""
    rows = []
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    sets = rotation_count((n * k + m * (n + k)) * 2, l2)
    pattern = torch.tensor([0, 0, 1, 1], device=device, dtype=torch.float16).tile(n, k // 4)
    w = [torch.randn(n, k, device=device, dtype=torch.float16) * pattern for _ in range(sets)]
    x = [torch.randn(m, k, device=device, dtype=torch.float16) for _ in range(sets)]
    bias = torch.randn(n, device=device, dtype=torch.float16)
    alpha = torch.rand(n, device=device) / 100
    w8 = [(t * 30).clamp(-127, 127).to(torch.int8) for t in w]
    x8 = [(t * 30).clamp(-127, 127).to(torch.int8) for t in x]
    wf8, xf8 = [t.to(FP8) for t in w], [t.to(FP8) for t in x]
    one = torch.tensor(1.0, device=device)
    steps = {
        "dense_fp16": lambda i: F.linear(x[i % sets], w[i % sets], bias),
        "dense_int8": lambda i: torch._int_mm(x8[i % sets], w8[i % sets].t()),
        "dense_fp8": lambda i: torch._scaled_mm(xf8[i % sets], wf8[i % sets].t(), scale_a=one,
                                                   scale_b=one, bias=bias, out_dtype=torch.float16,
                                                   use_fast_accum=True),
    }
    packed = {}
    for kind, weights, inputs, extra in (
            ("sparse_fp16", w, x, {}),
            ("sparse_int8", w8, x8, {"alpha": alpha, "out_dtype": torch.float16}),
            ("sparse_fp8", wf8, xf8, {"alpha": alpha, "out_dtype": torch.float16}),
            ("sparse_fp8_scalar", wf8, xf8, {"out_dtype": torch.float16})):
        try:
            packed[kind] = [torch._cslt_compress(t) for t in weights]
            searched = 0  # cuSPARSELt's own search breaks the CUDA context on torch 2.11 (engine/tuning.search_works)
        except Exception as error:  # the probe's question: does this build run it at all
            rows.append({"kernel": kind, "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"})
            continue
        for alg in sorted({0, searched}):
            steps[f"{kind}@{alg}"] = cslt_step(packed[kind], inputs, bias, extra, alg)
    dense_ms = None
    for name, step in steps.items():
        try:
            ms = graph_time_ms(step, max(sets, 4), replays=20)
        except Exception as error:
            rows.append({"kernel": name, "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"})
            continue
        dense_ms = ms if name == "dense_fp16" else dense_ms
        rows.append({"kernel": name, "ms": round(ms, 4),
                     "vs_dense_fp16": round(dense_ms / ms, 3) if dense_ms else None})
    return rows


if __name__ == "__main__":
    main()
