"""The host work the engine's modules add to an eager forward, measured on a CPU.

An eager forward at a small batch is bound by the host: each op's Python and dispatch cost, not the
GPU's arithmetic. Where the plan runs a layer dense at that batch, its SparseLinear should cost what
the nn.Linear it replaced did. This times a BERT whose arithmetic is negligible (hidden 8, seq 8, one
thread), as it comes and with every encoder Linear a SparseLinear on its dense path, interleaved in
rounds (engine.timing), and prints the ratio with its 95% interval. A figure of host cost only: it
says nothing of a GPU's kernels.

    python benchmarks/eager_host_cost.py [--layers 12] [--rounds 20]
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertForQuestionAnswering

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from engine.kernels import SparseConfig, SparseLinear, swap_linears  # noqa: E402
from engine.timing import interleaved, ratio_interval  # noqa: E402

CPU = torch.device("cpu")


def models(layers: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the model as it comes, the same with its encoder Linears as dense-path SparseLinears)."""
    torch.manual_seed(0)
    config = BertConfig(hidden_size=8, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=32,
                        vocab_size=100, max_position_embeddings=64)
    dense = BertForQuestionAnswering(config).eval()
    engine = swap_linears(copy.deepcopy(dense), lambda name: SparseConfig({64: None, 256: None}),
                          lambda module, name: ".encoder." in f".{name}")
    assert sum(isinstance(module, SparseLinear) for module in engine.modules()) == 6 * layers
    return dense, engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=200, help="forwards a turn")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dense, engine = models(args.layers)
    ids = torch.randint(0, 100, (2, 8))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.inference_mode():
        assert torch.equal(dense(**inputs).start_logits, engine(**inputs).start_logits)
        timings = interleaved({"nn.Linear": lambda: dense(**inputs), "SparseLinear, dense path": lambda: engine(**inputs)},
                              CPU, warmup=50, rounds=args.rounds, calls=args.calls)
    interval = ratio_interval(timings, "SparseLinear, dense path", "nn.Linear")
    for name in timings.times_ms:
        print(f"{name:>26}: {timings.median_ms(name) * 1000:8.1f} µs a forward")
    print(f"nn.Linear time / SparseLinear time: {interval.median:.3f} [{interval.low:.3f}, {interval.high:.3f}]"
          f"{'' if interval.trusted else ' (interval past ±3%: not a result)'} over {interval.rounds} rounds, "
          f"{6 * args.layers} Linears, torch {torch.__version__}")


if __name__ == "__main__":
    main()
