"""Probe (issue #18): where the compiled bert-base forward spends its GPU time, dense fp16 vs the
accelerated model, per kernel class; the attention kernel each SDPA backend gives, timed as the
benchmark times (torch.compile + CUDA graph replay); and the host time of an eager forward.

Run on the GPU from the repository root after gpu_engine.py --only accelerate --work WORK:
    python docs/results/2026-12-02-probe-compiled-profile.py --work WORK --out OUT.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.runtime import load_cusparselt  # noqa: E402

load_cusparselt()

import torch  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from engine.attention import capture_context, use_fused_attention  # noqa: E402
from engine.graphs import CudaGraphRunner  # noqa: E402
from engine.plan import inference_model, load_accelerated  # noqa: E402
from engine.tuning import median_ms, random_ids  # noqa: E402

CLASSES = (("2:4 (cuSPARSELt)", ("sparse", "sp_", "cusparselt")), ("attention", ("flash", "fmha", "attention", "cudnn", "sdpa")),
           ("dense gemm", ("gemm", "nvjet", "cutlass", "sm90_xmma", "ampere")), ("fused elementwise (triton)", ("triton",)))


def kernel_class(name: str) -> str:
    lowered = name.lower()
    return next((label for label, keys in CLASSES if any(key in lowered for key in keys)), "other")


def profile(forward, iterations: int = 5) -> dict:
    forward()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(iterations):
            forward()
        torch.cuda.synchronize()
    by_kernel: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            by_kernel[event.name] += event.device_time_total / 1000 / iterations
    by_class: dict[str, float] = defaultdict(float)
    for name, ms in by_kernel.items():
        by_class[kernel_class(name)] += ms
    top = sorted(by_kernel.items(), key=lambda item: -item[1])[:12]
    return {"ms_per_forward": round(sum(by_kernel.values()), 3),
            "by_class_ms": {label: round(ms, 3) for label, ms in sorted(by_class.items(), key=lambda i: -i[1])},
            "top_kernels_ms": [[name[:110], round(ms, 3)] for name, ms in top]}


def eager_host_ms(model, input_ids, repeats: int = 10) -> dict:
    """Median wall time of an eager forward and the host time of launching it (no sync inside)."""
    walls, hosts = [], []
    for _ in range(repeats + 2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model(input_ids=input_ids)
        launched = time.perf_counter()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - start) * 1000)
        hosts.append((launched - start) * 1000)
    return {"wall_ms": round(sorted(walls[2:])[repeats // 2], 3), "host_ms": round(sorted(hosts[2:])[repeats // 2], 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=384)
    args = parser.parse_args()
    device, dtype = torch.device("cuda"), torch.float16
    models = {"dense": use_fused_attention(inference_model(args.work / "dense", device, dtype)),
              "accelerated": load_accelerated(args.work / "accelerated", device, dtype, graphs=False)}
    input_ids = random_ids(args.batch, args.seq, models["dense"].config.vocab_size, device)
    result = {"batch": args.batch, "seq": args.seq, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}

    def save():
        args.out.write_text(json.dumps(result, indent=2))

    with torch.inference_mode():
        result["eager"] = {name: eager_host_ms(model, input_ids) for name, model in models.items()}
        print(json.dumps(result["eager"]), flush=True)
        save()
        result["profile_compiled"] = {}
        for name, model in models.items():
            compiled = torch.compile(model, dynamic=False)
            with capture_context({"input_ids": input_ids}):
                result["profile_compiled"][name] = profile(lambda: compiled(input_ids=input_ids))
            print(name, json.dumps(result["profile_compiled"][name], indent=1), flush=True)
            torch.compiler.reset()
            save()
        result["graphed_ms_by_sdpa_backend"] = {}
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
            row = result["graphed_ms_by_sdpa_backend"][backend.name] = {}
            for name, model in models.items():
                try:
                    with sdpa_kernel(backend):
                        runner = CudaGraphRunner(model, capture_context=capture_context, compile=True)
                        row[name] = round(median_ms(lambda: runner(input_ids=input_ids), 3, 20, device), 4)
                except Exception as err:  # a backend this GPU or shape does not take
                    row[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
                torch.compiler.reset()
                torch.cuda.empty_cache()
            if all(isinstance(v, float) for v in row.values()):
                row["speedup"] = round(row["dense"] / row["accelerated"], 3)
            print(backend.name, row, flush=True)
            save()


if __name__ == "__main__":
    main()
