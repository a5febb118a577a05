"""Probe, as run on the lent H100 (2026-11-26): where does the compiled int8 2:4 model lose its time?

1. A kernel-level profile (torch.profiler, one compiled forward, batch 64) of dense, int8 per-token and
   int8 static-scale models (the models of 2026-11-26-probe-int8-compiled.py; the static one without
   that run's graph break per Linear), and the inductor code of the per-token model under $OUT.
2. The int8 kernel alone at bert-base's FFN shapes, 24576 tokens (batch 64 x 384), per output/epilogue
   option (alpha with bf16 or fp16 out, bias in the kernel), against cuBLAS fp16 with bias.
Run from the repository root: python docs/gpu-runs/2026-11-26-probe-int8-profile.py
"""
import collections
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("first_probe", HERE / "2026-11-26-probe-int8-compiled.py")
first = importlib.util.module_from_spec(spec)
spec.loader.exec_module(first)

from stages.attention import capture_context  # noqa: E402
from stages.sparse_engine import _cslt_tokens_mm, bucket_for, graph_time_ms  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp"))
TOKENS = 24576


class StaticInt8(first.StaticInt8SparseLinear):
    out_dtype = torch.float16

    def forward(self, x):
        x2d = x.reshape(-1, self.in_features)
        x_q = (x2d.float() * self.inv_scale).round().clamp(-127, 127).to(torch.int8)
        alg_id = self.kernels[bucket_for(x2d.shape[0], sorted(self.kernels))]
        bias = {"bias": self.bias.to(self.out_dtype)} if self.bias_in_kernel else {}
        out = _cslt_tokens_mm(self.packed, x_q, alpha=self.alpha, out_dtype=self.out_dtype, alg_id=alg_id, **bias)
        if not self.bias_in_kernel:
            out = out + self.bias
        return out.to(torch.float16).reshape(*x.shape[:-1], self.out_features)


def kernel_options():
    print("\n== int8 2:4 kernel alone, 24576 tokens, best of alg_id 0..15 (ms GPU time) ==", flush=True)
    for out_f, in_f in ((3072, 768), (768, 3072), (768, 768)):
        w = torch.randn(out_f, in_f, device="cuda", dtype=torch.float16) * torch.tensor(
            [0, 0, 1, 1], device="cuda", dtype=torch.float16).tile(out_f, in_f // 4)
        xs = [torch.randn(TOKENS, in_f, device="cuda", dtype=torch.float16) for _ in range(4)]
        bias = torch.randn(out_f, device="cuda", dtype=torch.float16)
        dense = graph_time_ms(lambda i: F.linear(xs[i % 4], w, bias), 8)
        packed = torch._cslt_compress((w * 30).clamp(-127, 127).to(torch.int8))
        xq = [(x * 30).clamp(-127, 127).to(torch.int8) for x in xs]
        alpha = torch.rand(out_f, device="cuda") / 100
        options = {
            "alpha_bf16out": dict(alpha=alpha, out_dtype=torch.bfloat16),
            "alpha_fp16out": dict(alpha=alpha, out_dtype=torch.float16),
            "alpha_bias_fp16out": dict(alpha=alpha, bias=bias, out_dtype=torch.float16),
            "alpha_bias_bf16out": dict(alpha=alpha, bias=bias.bfloat16(), out_dtype=torch.bfloat16),
            "int8out_noalpha": dict(),
        }
        cells = [f"cuBLAS fp16 {dense:.4f}"]
        for name, kwargs in options.items():
            best = None
            for alg in range(16):
                try:
                    ms = graph_time_ms(lambda i: _cslt_tokens_mm(packed, xq[i % 4], alg_id=alg, **kwargs), 8)
                except Exception as err:
                    cells.append(f"{name} alg {alg} failed: {str(err).splitlines()[0][:80]}")
                    break
                best = min(best or (ms, alg), (ms, alg))
            if best:
                cells.append(f"{name} {best[0]:.4f} (alg {best[1]}, x{dense / best[0]:.2f})")
        print(f"{out_f}x{in_f}: " + " | ".join(cells), flush=True)


def profile(label, model, ids):
    compiled = torch.compile(model, dynamic=False)
    with torch.inference_mode(), capture_context({"input_ids": ids}):
        for _ in range(2):
            compiled(input_ids=ids)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            compiled(input_ids=ids)
            torch.cuda.synchronize()
    totals = collections.Counter()
    for evt in prof.key_averages():
        totals[evt.key] += getattr(evt, "device_time_total", 0) or 0
    groups = collections.Counter()
    for key, us in totals.items():
        k = key.lower()
        group = ("cusparselt" if "sm90_xmma_sparse" in k or "sparse" in k or "cusparselt" in k else
                 "attention" if "flash" in k or "fmha" in k or "attention" in k else
                 "cublas gemm" if "gemm" in k or "sm90_xmma" in k or "cutlass" in k or "nvjet" in k else
                 "triton (fused elementwise)" if k.startswith("triton") else "other")
        groups[group] += us
    total = sum(totals.values())
    print(f"\n== {label}: {total / 1000:.3f} ms kernel time per forward ==", flush=True)
    for group, us in groups.most_common():
        print(f"  {group:<28} {us / 1000:8.3f} ms", flush=True)
    for key, us in totals.most_common(14):
        print(f"    {us / 1000:8.3f} ms  {key[:150]}", flush=True)
    return compiled


def main():
    dense = first.build()
    scales = first.input_scales(dense)
    ids = torch.randint(0, 28996, (64, first.SEQ), device="cuda")
    profile("dense compiled", dense, ids)
    torch.compiler.reset()
    profile("int8 per-token compiled", first.int8_dynamic(dense), ids)
    cache = torch._inductor.codecache.PyCodeCache
    for module in list(getattr(cache, "modules", [])) or list(getattr(cache, "cache", {}).values()):
        if "_cslt_sparse_mm" in Path(module.__file__).read_text():
            shutil.copy(module.__file__, OUT / "int8dyn_output_code.py")
            break
    torch.compiler.reset()
    static = first.int8_static(dense, scales)
    for out_dtype, in_kernel in ((torch.float16, True), (torch.bfloat16, False)):
        for module in static.modules():
            if isinstance(module, first.StaticInt8SparseLinear):
                module.__class__ = StaticInt8
                module.out_dtype, module.bias_in_kernel = out_dtype, in_kernel
        profile(f"int8 static compiled, {out_dtype} out, bias in kernel {in_kernel}", static, ids)
        torch.compiler.reset()
    kernel_options()  # last: a kernel option cuSPARSELt rejects can leave the CUDA context unusable


if __name__ == "__main__":
    main()
