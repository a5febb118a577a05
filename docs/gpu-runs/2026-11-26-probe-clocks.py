"""Probe, as run on the lent GPU (2026-11-26): why dense fp16 graph replays take longer than the
sum of their kernels (and spread by 5% between compilations) while int8 2:4 replays match theirs.
Replays each model (bert-base-shaped, fused query/key/value, compiled CUDA graph, batch 64, seq
384) back to back for SECONDS while nvidia-smi samples SM clock, power and throttle reasons every
100 ms; prints the replay time in the first and last second and the samples' medians.
Run from the repository root: python docs/gpu-runs/2026-11-26-probe-clocks.py
"""
import copy
import importlib.util
import statistics
import subprocess
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("fused_probe", HERE / "2026-11-26-probe-fused-qkv.py")
fused_probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fused_probe)

from stages.accelerate import random_ids  # noqa: E402
from stages.attention import capture_context, fuse_qkv  # noqa: E402
from stages.modeling import encoder_linears  # noqa: E402
from stages.sparse_engine import CudaGraphRunner, tune_linears  # noqa: E402

BATCH, SECONDS = 64, 12
QUERY = "clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active"
if subprocess.run(["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv"], capture_output=True).returncode:
    QUERY = QUERY.replace("clocks_event_reasons", "clocks_throttle_reasons")  # older drivers' name


def sampled_replays(label, runner, ids):
    runner(input_ids=ids)  # capture
    torch.cuda.synchronize()
    smi = subprocess.Popen(["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits", "-lms", "100"],
                           stdout=subprocess.PIPE, text=True)
    times, begin = [], time.perf_counter()
    while time.perf_counter() - begin < SECONDS:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        runner(input_ids=ids)
        end.record()
        end.synchronize()
        times.append((time.perf_counter() - begin, start.elapsed_time(end)))
    smi.terminate()
    samples = [line.split(", ") for line in smi.communicate()[0].splitlines() if line.count(",") == 3]
    first = [ms for t, ms in times if t < 1]
    last = [ms for t, ms in times if t > SECONDS - 1]
    clocks = [float(s[0]) for s in samples]
    power = [float(s[1]) for s in samples]
    reasons = sorted({s[3] for s in samples})
    print(f"{label:<22} replay ms: first second {statistics.median(first):.3f}, last second {statistics.median(last):.3f}, "
          f"all {statistics.median(ms for _, ms in times):.3f} ({len(times)} replays); SM clock median {statistics.median(clocks):.0f} "
          f"MHz (min {min(clocks):.0f}), power median {statistics.median(power):.0f} W (max {max(power):.0f}), "
          f"temperature max {max(float(s[2]) for s in samples):.0f} C, throttle reasons seen {reasons}", flush=True)


def main():
    dense = fuse_qkv(fused_probe.build())
    shapes = sorted({tuple(lin.weight.shape) for lin in encoder_linears(dense).values()})
    timings, _ = tune_linears([(*shape, BATCH * fused_probe.SEQ) for shape in shapes], torch.float16,
                              max_alg_id=15, int8=True)
    fused_probe.BATCHES = [BATCH]
    int8_model = fused_probe.int8_model(dense, timings)
    ids = random_ids(BATCH, fused_probe.SEQ, dense.config.vocab_size, torch.device("cuda"))
    for round_number in (1, 2):
        for label, model in (("dense fp16", dense), ("int8 2:4", int8_model)):
            runner = CudaGraphRunner(model, capture_context=capture_context, compile=True)
            sampled_replays(f"round {round_number} {label}", runner, ids)
            del runner
            torch.compiler.reset()


if __name__ == "__main__":
    main()
