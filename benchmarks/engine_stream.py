"""A variable-shape request stream, dense vs accelerated, both served the same way: any (batch, seq)
padded up to a bucket, the padding masked, each bucket's CUDA graph (of the torch.compile'd model,
as the plan was timed) captured on first use (engine/graphs.py, BucketedRunner).

The requests are a seeded list (batch 1..256, sequence 64..384 tokens by default). One pass over
them captures every bucket they touch; then --passes rounds each time one pass of each model end to
end (host work included, one synchronize at the end), interleaved (engine/timing.py): throughput is
real (unpadded) tokens per second over the median pass, and the speedup is the median of the rounds'
accelerated / dense throughput ratios, with its bootstrap interval. Dense is the accelerated model's
own (2:4-masked) weights on the dense kernels, so the first requests' outputs check the engine: dense
bucketed vs dense unpadded (what the padding changes), accelerated vs dense bucketed (what the 2:4
kernels change), the latter against the plan's bound (int8 where the plan runs int8 kernels). Its
zeros draw less power than the unpruned model's weights, so this dense runs a little faster than the
one a user has (the benchmark stage's): the speedup here is against dense_masked.

    python benchmarks/engine_stream.py --work DIR --out stream.json   # DIR: gpu_engine.py --work DIR
"""
from __future__ import annotations

import functools
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.runtime import load_cusparselt  # noqa: E402

load_cusparselt()  # $TWOFOUR_CUSPARSELT, before torch is imported

import torch  # noqa: E402

from engine.attention import capture_context, use_fused_attention  # noqa: E402
from engine.graphs import BucketedRunner  # noqa: E402
from engine.plan import PLAN_FILE, Plan, inference_model, load_accelerated  # noqa: E402
from engine.planner import MAX_INT8_RELATIVE_ERROR, MAX_RELATIVE_ERROR, logits_error  # noqa: E402
from engine.runtime import cusparselt_facts  # noqa: E402
from engine.timing import ROUNDS, interleaved, ratio_interval  # noqa: E402
from gpu_engine import work_parser  # noqa: E402

CHECKED_REQUESTS = 3


def requests(count: int, seed: int, max_batch: int = 256, min_seq: int = 64, max_seq: int = 384) -> list[tuple[int, int]]:
    """`count` seeded (batch, seq) pairs, each uniform in [1, max_batch] x [min_seq, max_seq]."""
    rng = random.Random(seed)
    return [(rng.randint(1, max_batch), rng.randint(min_seq, max_seq)) for _ in range(count)]


def request_inputs(shapes: list[tuple[int, int]], vocab_size: int, device: torch.device, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, shape, generator=generator).to(device) for shape in shapes]


def one_pass(runner, inputs: list[torch.Tensor]) -> None:
    """Every request through the runner, once."""
    for input_ids in inputs:
        runner(input_ids=input_ids)


@torch.inference_mode()
def output_errors(dense: torch.nn.Module, dense_runner, accelerated_runner, inputs: list[torch.Tensor]) -> dict:
    """Per checked request, relative logits error: bucketed dense vs unpadded dense, accelerated vs dense."""
    errors = {}
    for input_ids in inputs[:CHECKED_REQUESTS]:
        key = "x".join(map(str, input_ids.shape))
        bucketed = dense_runner(input_ids=input_ids)
        errors[key] = {"padding": logits_error(dense(input_ids=input_ids), bucketed),
                       "accelerated_vs_dense": logits_error(bucketed, accelerated_runner(input_ids=input_ids))}
    return errors


def compare(dense: torch.nn.Module, accelerated: torch.nn.Module, shapes: list[tuple[int, int]],
            batch_buckets: list[int], seq_buckets: list[int], compile: bool, passes: int, seed: int,
            error_bound: float, on_result=lambda result: None) -> dict:
    """The stream through both models, bucketed the same way; on_result gets the result as it grows."""
    device = next(dense.parameters()).device
    inputs = request_inputs(shapes, dense.config.vocab_size, device, seed)
    tokens = sum(batch * seq for batch, seq in shapes)
    result = {"requests": len(shapes), "tokens": tokens, "batch_buckets": batch_buckets, "seq_buckets": seq_buckets,
              "compiled": compile, "passes": passes, "seconds": {}, "tokens_per_s": {}}
    runners = {}
    with torch.inference_mode():
        for name, model in (("dense", dense), ("accelerated", accelerated)):
            # Twice the buckets: a request that fills its bucket exactly goes in without a mask, another graph.
            runners[name] = BucketedRunner(model, batch_buckets, seq_buckets,
                                           max_graphs=2 * len(batch_buckets) * len(seq_buckets),
                                           capture_context=capture_context, compile=compile)
            one_pass(runners[name], inputs)  # captures every bucket the requests touch
            result["graphs"] = {**result.get("graphs", {}), name: len(runners[name].graphs)}
            # Both models' forwards are one code object: under one recompile limit (8) the second model's
            # buckets would run uncompiled. Graphs already captured keep replaying.
            torch.compiler.reset()
        on_result(result)
        timings = interleaved({name: functools.partial(one_pass, runner, inputs) for name, runner in runners.items()},
                              device, warmup=0, rounds=passes, min_turn_s=0)
    for name in runners:
        result["seconds"][name] = [turn[0] / 1000 for turn in timings.times_ms[name]]
        result["tokens_per_s"][name] = round(tokens * 1000 / timings.median_ms(name), 1)
    interval = ratio_interval(timings, "accelerated", "dense")
    result["speedup"], result["speedup_interval"] = round(interval.median, 3), interval.report()
    result["relative_error"] = output_errors(dense, runners["dense"], runners["accelerated"], inputs)
    result["relative_error_bound"] = error_bound
    result["within_bound"] = all(errors["accelerated_vs_dense"] <= error_bound
                                 for errors in result["relative_error"].values())
    on_result(result)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = work_parser(__doc__)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--passes", type=int, default=ROUNDS,
                        help="timed rounds, each one pass of each model over the requests")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--min-seq", type=int, default=64)
    parser.add_argument("--max-seq", type=int, default=384)
    parser.add_argument("--batch-buckets", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--seq-buckets", type=int, nargs="+", default=[128, 384])
    parser.add_argument("--no-compile", action="store_true", help="capture the eager modules, not compiled ones")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    plan = Plan.load(args.work / "accelerated" / PLAN_FILE)
    dtype = getattr(torch, plan.dtype) if device.type == "cuda" else torch.float32
    dense = use_fused_attention(inference_model(args.work / "accelerated", device, dtype))  # its plan not applied
    accelerated = load_accelerated(args.work / "accelerated", device, dtype, graphs=False)
    runs_int8 = any(layer.computes_int8 for layer in plan.layers.values())
    shapes = requests(args.requests, args.seed, args.max_batch, args.min_seq, args.max_seq)
    header = {"command": " ".join(sys.argv), "device": torch.cuda.get_device_name(device) if device.type == "cuda"
              else "cpu", "cusparselt": cusparselt_facts(), "request_shapes": shapes}

    def save(result: dict) -> None:
        if args.out:
            args.out.write_text(json.dumps({**header, **result}, indent=2))

    result = compare(dense, accelerated, shapes, args.batch_buckets, args.seq_buckets,
                     plan.compiled and not args.no_compile, args.passes, args.seed,
                     MAX_INT8_RELATIVE_ERROR if runs_int8 else MAX_RELATIVE_ERROR, save)
    print(f"stream of {result['requests']} requests ({result['tokens']} tokens): dense {result['tokens_per_s']['dense']} "
          f"tokens/s, accelerated {result['tokens_per_s']['accelerated']} tokens/s, x{result['speedup']}")
    print(f"relative error: {json.dumps(result['relative_error'])}")
    if not result["within_bound"]:
        print(f"warning: accelerated outputs differ from the same weights run dense by more than "
              f"{result['relative_error_bound']}", file=sys.stderr)


if __name__ == "__main__":
    main()
