"""Probe (issue #18): can cuSPARSELt's GELU epilogue hand the next int8 layer its input directly?

A BERT layer's intermediate Linear (3072x768) is followed by GELU and, where the output Linear runs
int8, by a quantization pass. cuSPARSELt computes D = gelu(alpha * A @ B + bias) * gelu_scaling in its
epilogue; with an int8 D and gelu_scaling = 1 / (the next layer's input scale) that is the next layer's
int8 input, in the GEMM itself. This checks (1) which bias dtype an int8 D takes, (2) which GELU the
epilogue computes (erf or tanh) and how its int8 rounding compares with torch.round, (3) the time of
the fused GEMM against today's int8 GEMM (fp16 out) plus the compiled GELU+quantize pass.

Run on the GPU machine from the project root: TWOFOUR_PLAN_CACHE=1 python <this file> [--max-alg-id N]
"""
import argparse
import json
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, ".")
from engine import plan_cache  # noqa: E402
from engine.kernels import quantize_input  # noqa: E402
from engine.runtime import loaded_version  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--max-alg-id", type=int, default=47)
parser.add_argument("--out")
args = parser.parse_args()

reason = plan_cache.enable()
if reason:
    sys.exit(f"plan cache off: {reason}")
cache = plan_cache._state["cache"]
gen = torch.Generator(device="cuda").manual_seed(0)
out_features, in_features = 3072, 768
pattern = torch.tensor([0, 0, 1, 1], device="cuda", dtype=torch.int8).tile(out_features, in_features // 4)
weight_q = (torch.randn(out_features, in_features, device="cuda", generator=gen) * 40).round().clamp(-127, 127)
weight_q = weight_q.to(torch.int8) * pattern
packed = torch._cslt_compress(weight_q)
alpha = (torch.rand(out_features, device="cuda", generator=gen) + 0.5) * 2e-4
bias16 = (torch.randn(out_features, device="cuda", generator=gen) * 0.5).half()
input_scale = 0.03  # the next layer's: GELU outputs up to ~3.8 map to 127
report = {"cusparselt": loaded_version(), "torch": torch.__version__, "device": torch.cuda.get_device_name(),
          "checks": {}, "timing_ms": {}}


def time_ms(fn, repeats=50):
    for _ in range(5):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for start, end in zip(starts, ends):
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return sorted(s.elapsed_time(e) for s, e in zip(starts, ends))[repeats // 2]


x_q = (torch.randn(1024, in_features, device="cuda", generator=gen) * 30).round().clamp(-127, 127).to(torch.int8)
z = (x_q.double() @ weight_q.double().t()) * alpha.double() + bias16.double()
for bias_name, bias in (("float32", bias16.float()), ("float16", bias16)):
    try:
        got = cache.matmul(packed, x_q, bias, alpha, torch.int8, 0, 1 / input_scale)
        torch.cuda.synchronize()
    except RuntimeError as err:
        report["checks"][f"bias {bias_name}"] = f"error: {err}"
        continue
    check = {}
    for gelu_name, approximate in (("erf", "none"), ("tanh", "tanh")):
        expected = (F.gelu(z, approximate=approximate) / input_scale).round().clamp(-128, 127)
        diff = (got.double() - expected).abs()
        check[gelu_name] = {"equal_fraction": (diff == 0).double().mean().item(), "max_diff": diff.max().item()}
    check["output_range"] = [got.min().item(), got.max().item()]
    report["checks"][f"bias {bias_name}"] = check
print(json.dumps(report["checks"], indent=1))
bias_for_int8 = bias16.float() if isinstance(report["checks"].get("bias float32"), dict) else bias16

gelu_quantize = torch.compile(lambda y, multipliers: quantize_input(F.gelu(y), multipliers))
multipliers = torch.full((out_features,), 1 / input_scale, device="cuda")
for batch in (16, 64, 256):
    tokens = batch * 384
    x = (torch.randn(tokens, in_features, device="cuda", generator=gen) * 30).round().clamp(-127, 127).to(torch.int8)
    best = {}
    for alg_id in range(args.max_alg_id + 1):
        try:
            plain = time_ms(lambda: cache.matmul(packed, x, bias16, alpha, torch.float16, alg_id))
            fused = time_ms(lambda: cache.matmul(packed, x, bias_for_int8, alpha, torch.int8, alg_id, 1 / input_scale))
        except RuntimeError:
            break
        best["plain"] = min(best.get("plain", (1e9, 0)), (plain, alg_id))
        best["fused"] = min(best.get("fused", (1e9, 0)), (fused, alg_id))
    y = cache.matmul(packed, x, bias16, alpha, torch.float16, best["plain"][1])
    pass_ms = time_ms(lambda: gelu_quantize(y, multipliers))
    row = {"gemm_fp16_out": best["plain"], "gelu_quantize_pass": pass_ms, "gemm_gelu_int8_out": best["fused"],
           "today_total": best["plain"][0] + pass_ms}
    row["saved_per_layer_ms"] = row["today_total"] - best["fused"][0]
    report["timing_ms"][batch] = row
    print(batch, json.dumps(row), flush=True)
if args.out:
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
