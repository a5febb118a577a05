"""Where an inference forward's time goes, model by model: the benchmark's dense and accelerated
models and, with --matrix, the rest of its 2x2 matrix (8-bit dense, fp16 2:4, the GELU-epilogue
variants), built as the benchmark stage builds them. Each is compiled as the benchmark times it
(static shapes) and profiled, without CUDA graphs so that every kernel shows, over --steps forwards
per batch size; its GPU time is grouped by what the kernels do (GROUPS: dense and 2:4 GEMMs by
precision, attention, norms and what inductor fused into them, other fused elementwise, copies), each
group with every kernel's time, busiest first
(so a file can be regrouped by later rules). Beside it, one forward's median wall time compiled
(`wall_ms`) and, on a GPU, compiled and replayed as a CUDA graph (`graphed_ms`, the benchmark's
figure): the kernels' sum against the graph's wall is the GPU's idle time, the compiled wall against
the graph's the cost of launching. No speedups here: those come interleaved, with intervals, from the
benchmark. On a CPU the ops' own CPU time, grouped alike; there inductor's compiled code is one
region, not its kernels one by one (--no-compile shows the ops).

    python benchmarks/engine_profile.py --work DIR [--batch-sizes 64] [--seq-length 384] [--steps 10]
        [--matrix] [--out profile.json]          # DIR: gpu_engine.py --work DIR (dense/, accelerated/)
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.runtime import load_cusparselt  # noqa: E402

load_cusparselt()  # $TWOFOUR_CUSPARSELT, before torch is imported

import torch  # noqa: E402

from engine.attention import capture_context, use_fused_attention  # noqa: E402
from engine.common import best_device  # noqa: E402
from engine.graphs import CudaGraphRunner  # noqa: E402
from engine.plan import PLAN_FILE, Plan, inference_model, load_accelerated  # noqa: E402
from engine.runtime import cusparselt_facts  # noqa: E402
from engine.timing import median_ms  # noqa: E402
from engine.tuning import random_ids  # noqa: E402
from gpu_engine import work_parser  # noqa: E402
from profiling import activities, own_time  # noqa: E402
from stages.benchmark import matrix_models  # noqa: E402
from stages.params import load_params  # noqa: E402

# cuBLAS's Hopper kernels (nvjet_sm90_hsh_..., nvjet_sm90_qqhsh_...) spell their types in one word:
# q an fp8 operand, i an int8 one. cuSPARSELt 0.10's fp16 2:4 kernels are nvjet too, without the sm
# part and marked _sp_ (nvjet_hsh_128x256_64x5_2x1_h_bx_coopA_bias_sp_TNT).
NVJET_8BIT = r"nvjet_(?:sm\d+_)?[a-z]*[qi][a-z]*_"
SPARSE = re.compile(r"sparse|cslt|nvjet_\S*_sp_")
EIGHT_BIT = re.compile(r"imma|int8|e4m3|e5m2|fp8|_int_mm|_scaled_mm|(?<![a-z0-9])[is]8(?![0-9])|" + NVJET_8BIT)
GEMM = re.compile(r"gemm|cutlass|xmma|cublas|nvjet|matmul|addmm|aten::mm|aten::bmm|aten::linear|_int_mm|_scaled_mm")
# Inductor's fused pointwise, persistent and reduction kernels are named after every op they hold,
# also the GEMM or attention whose output they read (triton_poi_fused__cslt_sparse_mm__to_copy_clamp_
# gelu_mul_round_...): they are never a GEMM or attention themselves, so only ELEMENTWISE's groups apply.
FUSED = ("triton_poi", "triton_per", "triton_red")
# (group, does a lower-cased kernel or op name belong to it), the first that matches wins.
ELEMENTWISE = (
    ("norms (and what is fused into them)", lambda name: "layer_norm" in name or "layernorm" in name),
    # int8: scale, round, clamp, cast; fp8: scale, clamp, cast
    ("quantize", lambda name: "quantize" in name or "round" in name or "clamp" in name and "to_copy" in name),
    ("other fused elementwise", lambda name: "triton" in name or "elementwise" in name or "gelu" in name),
)
GROUPS = (
    ("copies", lambda name: "memcpy" in name or "memset" in name),
    ("attention", lambda name: any(key in name for key in ("fmha", "flash", "sdpa", "attention", "scaled_dot_product"))),
    ("2:4 GEMM, 8-bit", lambda name: SPARSE.search(name) is not None and EIGHT_BIT.search(name) is not None),
    ("2:4 GEMM, fp16", lambda name: SPARSE.search(name) is not None),
    ("dense GEMM, 8-bit", lambda name: GEMM.search(name) is not None and EIGHT_BIT.search(name) is not None),
    ("dense GEMM, fp16", lambda name: GEMM.search(name) is not None),
    *ELEMENTWISE,
)
OTHER = "other"


def group_of(name: str) -> str:
    """The group a kernel (or, on a CPU, an op) belongs to, by its name."""
    lowered = name.lower()
    groups = ELEMENTWISE if lowered.startswith(FUSED) else GROUPS
    return next((group for group, belongs in groups if belongs(lowered)), OTHER)


def grouped(events, steps: int, on_gpu: bool) -> tuple[float, dict[str, dict]]:
    """(ms per forward of all the events' own time (profiling.own_time); per group its ms per forward,
    share and each kernel's ms per forward, busiest first), from profiler key averages over `steps`
    forwards."""
    events, time_of = own_time(events, on_gpu)
    total_us = sum(time_of(event) for event in events)
    groups: dict[str, dict] = {}
    for event in sorted(events, key=time_of, reverse=True):
        if time_of(event) <= 0:
            continue
        group = groups.setdefault(group_of(event.key), {"us": 0.0, "kernels": {}})
        group["us"] += time_of(event)
        name = event.key[:120]
        group["kernels"][name] = group["kernels"].get(name, 0.0) + time_of(event)
    table = {name: {"ms": round(group["us"] / 1000 / steps, 4),
                    "share": round(group["us"] / total_us, 4) if total_us else None,
                    "kernels": {name: round(us / 1000 / steps, 4) for name, us in group["kernels"].items()}}
             for name, group in sorted(groups.items(), key=lambda item: -item[1]["us"])}
    return total_us / 1000 / steps, table


def profile_model(model: torch.nn.Module, input_ids: torch.Tensor, steps: int, warmup: int,
                  device: torch.device, compile_model: bool = True) -> dict:
    """One model at one batch size: its wall time compiled (or eager, without compile_model), graphed
    wall time (GPU), and its profile."""
    on_gpu = device.type == "cuda"
    inputs = {"input_ids": input_ids}
    # Every model compiled afresh: they share BertForQuestionAnswering.forward, and after 8 compiles
    # of one function dynamo runs it eagerly.
    torch.compiler.reset()
    compiled = torch.compile(model, dynamic=False) if compile_model else model

    def forward():
        with capture_context(inputs):  # as the graphs are captured: no padding, the fused attention
            return compiled(input_ids=input_ids)

    with torch.inference_mode():
        result = {"wall_ms": round(median_ms(forward, warmup, steps, device), 4)}
        if on_gpu:
            # The compiled module itself captured (not compiled again): one compile per model and size.
            graphed = CudaGraphRunner(compiled, capture_context=capture_context)
            result["graphed_ms"] = round(median_ms(lambda: graphed(input_ids=input_ids), warmup, steps, device), 4)
            del graphed
        with torch.profiler.profile(activities=activities(on_gpu)) as profile:
            for _ in range(steps):
                forward()
            if on_gpu:
                torch.cuda.synchronize()
    total_ms, groups = grouped(profile.key_averages(), steps, on_gpu)
    result["kernel_ms" if on_gpu else "cpu_op_ms"] = round(total_ms, 4)
    if on_gpu:
        result["gpu_idle_in_graph_ms"] = round(result["graphed_ms"] - total_ms, 4)
    result["groups"] = groups
    return result


def models_to_profile(work: Path, params, device: torch.device, matrix: bool) -> dict[str, torch.nn.Module]:
    """The benchmark's models: dense (fused attention on a GPU) and accelerated, and with `matrix`
    the matrix's other cells (benchmark.matrix_models)."""
    on_gpu = device.type == "cuda"
    dtype = getattr(torch, params["accelerate.dtype"]) if on_gpu else torch.float32
    plan = Plan.load(work / "accelerated" / PLAN_FILE)
    dense = inference_model(work / "dense", device, dtype)
    models = {"dense": use_fused_attention(dense) if on_gpu else dense,
              "accelerated": load_accelerated(work / "accelerated", device, dtype, graphs=False, plan=plan)}
    if matrix:
        calibration = {"input_ids": random_ids(4, params["benchmark.seq_length"], dense.config.vocab_size, device)}
        added, _, _ = matrix_models(models["dense"], plan, work / "accelerated", device, dtype, calibration, params)
        models |= added
    return models


def print_table(by_batch: dict) -> None:
    for key, models in by_batch.items():
        names = list(models)
        print(f"\n{key}: ms per forward  " + "  ".join(f"{name:>18}" for name in names))
        rows = dict.fromkeys(group for model in models.values() for group in model["groups"])
        for group in rows:
            print(f"  {group[:36]:<36}" + "  ".join(f"{models[name]['groups'].get(group, {}).get('ms', 0.0):>18.4f}"
                                                 for name in names))
        for field in ("kernel_ms", "cpu_op_ms", "wall_ms", "graphed_ms", "gpu_idle_in_graph_ms"):
            if field in models[names[0]]:
                print(f"  {field:<36}" + "  ".join(f"{models[name][field]:>18.4f}" for name in names))


def main(argv: list[str] | None = None) -> None:
    parser = work_parser(__doc__)
    parser.add_argument("--params", type=Path, default=REPO / "gpu" / "params.yaml",
                        help="accelerate.dtype, accelerate.int8_smoothing and benchmark.seq_length come from here")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--seq-length", type=int, help="default: the params' benchmark.seq_length")
    parser.add_argument("--steps", type=int, default=10, help="forwards timed and profiled per model and batch size")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--matrix", action="store_true", help="also the 2x2 matrix's 8-bit dense and fp16 2:4 models")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="profile the modules as they are (quicker; not what the benchmark times)")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    device = best_device()
    seq_length = args.seq_length or params["benchmark.seq_length"]
    models = models_to_profile(args.work, params, device, args.matrix)
    result = {"command": " ".join(sys.argv), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "cusparselt": cusparselt_facts(), "seq_length": seq_length,
              "steps": args.steps, "compiled": args.compile, "by_batch": {}}
    for batch in args.batch_sizes:
        input_ids = random_ids(batch, seq_length, models["dense"].config.vocab_size, device, seed=batch)
        result["by_batch"][f"bs{batch}"] = {
            name: profile_model(model, input_ids, args.steps, args.warmup, device, args.compile)
            for name, model in models.items()}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if args.out:  # after each batch size: a run cut short keeps the sizes it finished
            args.out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result["by_batch"])


if __name__ == "__main__":
    main()
