"""Probe (issue #18): where an eager accelerated forward spends its time. bert-base shape, random 2:4
weights, batch 64 x seq 384, fp16; every encoder Linear on one fixed 2:4 kernel (alg_id 0: int8, then
fp16) through the plan cache, against the dense model, all eager. Prints per forward the wall time,
the host time to enqueue it, the time per call of calls made back to back (CUDA events, as the
benchmark stage times; added after the first log), and the profiler's top host (CPU) ops. From the repository root on a GPU:

    TWOFOUR_PLAN_CACHE=1 python docs/results/2026-12-02-probe-eager-host.py
"""
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from engine.runtime import load_cusparselt  # noqa: E402

load_cusparselt()
import torch  # noqa: E402
from transformers import BertConfig, BertForQuestionAnswering  # noqa: E402

from benchmarks.gpu_engine import BERT_BASE_CASED, two_four_mask  # noqa: E402
from engine import plan_cache  # noqa: E402
from engine.attention import fuse_qkv, use_fused_attention  # noqa: E402
from engine.kernels import Kernel, SparseConfig, named, swap_linears  # noqa: E402
from engine.runtime import cusparselt_facts  # noqa: E402
from stages.modeling import encoder_linears  # noqa: E402

BATCH, SEQ = 64, 384


def timings(model, input_ids, repeats=10):
    """(wall ms of a synchronized call, host ms to enqueue it, median of CUDA-event intervals of calls
    made back to back without a sync, as the benchmark stage times)."""
    for _ in range(3):
        model(input_ids=input_ids)
    torch.cuda.synchronize()
    walls, hosts = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        model(input_ids=input_ids)
        hosts.append(time.perf_counter() - start)
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
    events = []
    for _ in range(repeats):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        model(input_ids=input_ids)
        end.record()
        events.append((begin, end))
    torch.cuda.synchronize()
    back_to_back = statistics.median(begin.elapsed_time(end) for begin, end in events)
    return statistics.median(walls) * 1e3, statistics.median(hosts) * 1e3, back_to_back


def main():
    print(cusparselt_facts(), torch.cuda.get_device_name(), torch.__version__, flush=True)
    print("plan cache:", plan_cache.enable() or "on", flush=True)
    torch.manual_seed(0)
    dense = BertForQuestionAnswering(BertConfig(**BERT_BASE_CASED)).eval()
    with torch.no_grad():
        for linear in encoder_linears(dense).values():
            linear.weight.mul_(two_four_mask(linear.weight))
    dense = use_fused_attention(fuse_qkv(dense.half().cuda()))
    input_ids = torch.randint(0, 1000, (BATCH, SEQ), device="cuda")
    names = list(encoder_linears(dense))
    models = {"dense": dense}
    for precision in ("int8", "fp16"):
        def config_for(name, precision=precision):
            int8 = precision == "int8"
            ones = torch.ones(dense.get_submodule(name).in_features, device="cuda")
            return SparseConfig({BATCH * SEQ: Kernel(precision, 0)}, smoothing=ones if int8 else None,
                                input_scale=0.05 if int8 else None)
        models[precision] = swap_linears(copy.deepcopy(dense), config_for, named(names))
    with torch.inference_mode():
        for name, model in models.items():
            wall, host, back_to_back = timings(model, input_ids)
            print(f"{name}: eager forward {wall:.3f} ms, host enqueue {host:.3f} ms, "
                  f"back to back {back_to_back:.3f} ms", flush=True)
        for name, model in models.items():
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                    torch.profiler.ProfilerActivity.CUDA]) as prof:
                model(input_ids=input_ids)
                torch.cuda.synchronize()
            print(f"== {name}: top ops by self CPU time", flush=True)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=16, max_name_column_width=48),
                  flush=True)


if __name__ == "__main__":
    main()
