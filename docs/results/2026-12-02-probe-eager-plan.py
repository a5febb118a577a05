"""Probe (issue #18): where the eager forward of the tuned plan spends its time at batch 16 (seq 384),
the model gpu_engine.py --work DIR made, against its dense model, both eager as the benchmark runs them.
Prints the wall time, host enqueue time and back-to-back time (2026-12-02-probe-eager-host.py's
timings) of: dense; the accelerated model as planned; the same with the int8 input quantization as
torch ops instead of the direct Triton launch (what that launch costs on the host); then the profiler's
top host ops of the accelerated forward. From the repository root on a GPU:

    TWOFOUR_PLAN_CACHE=1 python docs/results/2026-12-02-probe-eager-plan.py --work DIR
"""
import argparse
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine.runtime import load_cusparselt  # noqa: E402

load_cusparselt()
import torch  # noqa: E402

from engine import kernels  # noqa: E402
from engine.attention import use_fused_attention  # noqa: E402
from engine.plan import PLAN_FILE, Plan, inference_model, load_accelerated  # noqa: E402
from engine.runtime import cusparselt_facts  # noqa: E402

timings = importlib.import_module("2026-12-02-probe-eager-host").timings


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    print(cusparselt_facts(), torch.cuda.get_device_name(), torch.__version__, flush=True)
    device = torch.device("cuda")
    plan = Plan.load(args.work / "accelerated" / PLAN_FILE)
    dense = use_fused_attention(inference_model(args.work / "dense", device, torch.float16))
    accelerated = load_accelerated(args.work / "accelerated", device, torch.float16, graphs=False)
    print("plan variants:", {b: row["variant"] for b, row in plan.summary().get("by_batch", {}).items()}, flush=True)
    input_ids = torch.randint(0, 1000, (args.batch, plan.seq_length), device=device)
    with torch.inference_mode():
        for name, model in (("dense", dense), ("accelerated", accelerated)):
            wall, host, back_to_back = timings(model, input_ids, repeats=30)
            print(f"{name}: eager forward {wall:.3f} ms, host enqueue {host:.3f} ms, back to back {back_to_back:.3f} ms",
                  flush=True)
        direct = kernels._direct_quantize
        kernels._direct_quantize = lambda: kernels.quantize_input
        wall, host, back_to_back = timings(accelerated, input_ids, repeats=30)
        kernels._direct_quantize = direct
        print(f"accelerated, quantize as torch ops: eager forward {wall:.3f} ms, host enqueue {host:.3f} ms, "
              f"back to back {back_to_back:.3f} ms", flush=True)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            accelerated(input_ids=input_ids)
            torch.cuda.synchronize()
        print("== accelerated: top ops by self CPU time", flush=True)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=48),
              flush=True)


if __name__ == "__main__":
    main()
