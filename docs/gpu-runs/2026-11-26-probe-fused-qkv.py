"""Probe, as run on the lent GPU (2026-11-26): what one query/key/value Linear
(stages.attention.fuse_qkv) buys, for dense fp16 and for int8 2:4 (SmoothQuant static scales, the
pipeline's Int8SparseLinear). bert-base-shaped random model, 2:4-masked, seq 384; each variant runs
as a CUDA graph of the torch.compile'd model (CudaGraphRunner, as accelerate and benchmark time
them). Two rounds, the second in reverse order, so drift shows. int8 kernels: the fastest
cuSPARSELt alg_id 0..15 per shape and token count, timed first (and printed against cuBLAS).
Run from the repository root: python docs/gpu-runs/2026-11-26-probe-fused-qkv.py [batch sizes]
"""
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.gpu_engine import BERT_BASE_CASED, two_four_mask  # noqa: E402
from stages import int8  # noqa: E402
from stages.accelerate import random_ids  # noqa: E402
from stages.attention import capture_context, fuse_qkv, use_fused_attention  # noqa: E402
from stages.modeling import encoder_linears  # noqa: E402
from stages.sparse_engine import CudaGraphRunner, best_alg, median_ms, swap_linears, tune_linears  # noqa: E402

SEQ = 384
BATCHES = [int(b) for b in sys.argv[1:]] or [16, 64, 256]
CUDA = torch.device("cuda")


def build():
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    model = BertForQuestionAnswering(BertConfig(**BERT_BASE_CASED)).eval()
    with torch.no_grad():
        for linear in encoder_linears(model).values():
            linear.weight.mul_(two_four_mask(linear.weight))
    return use_fused_attention(model.half().to(CUDA))


def int8_model(dense, timings):
    linears = encoder_linears(dense)
    calibration = int8.calibrate(dense, linears, {"input_ids": random_ids(16, 128, dense.config.vocab_size, CUDA)}, 0.8)
    kernels = {name: {b * SEQ: best_alg(timings[(*lin.weight.shape, b * SEQ)]) for b in BATCHES}
               for name, lin in linears.items()}
    return swap_linears(copy.deepcopy(dense), kernels,
                        int8_calibration={name: (s, scale) for name, (s, scale, _) in calibration.items()})


def main():
    print(f"torch {torch.__version__}, cuSPARSELt {torch.backends.cusparselt.version()}, "
          f"{torch.cuda.get_device_name()}", flush=True)
    dense = build()
    fused = fuse_qkv(copy.deepcopy(dense))
    shapes = sorted({tuple(lin.weight.shape) for lin in encoder_linears(fused).values()} | {(768, 768)})
    timings, notes = tune_linears([(*shape, b * SEQ) for shape in shapes for b in BATCHES], torch.float16,
                                  max_alg_id=15, int8=True)
    print("notes:", notes)
    for (out_f, in_f, tokens), timing in sorted(timings.items()):
        alg = best_alg(timing)
        print(f"GEMM {out_f}x{in_f} tokens {tokens:>6}: cuBLAS fp16 {timing['dense_ms']:.4f} ms, "
              f"int8 2:4 {timing['sparse_ms'][alg]:.4f} ms (alg_id {alg}), x{timing['dense_ms'] / timing['sparse_ms'][alg]:.2f}")
    variants = {"dense, three Linears": dense, "dense, fused qkv": fused,
                "int8 2:4, three Linears": int8_model(dense, timings), "int8 2:4, fused qkv": int8_model(fused, timings)}
    results = {}
    for round_number, order in enumerate((list(variants), list(reversed(variants)))):
        for batch in BATCHES:
            ids = random_ids(batch, SEQ, dense.config.vocab_size, CUDA, seed=batch)
            for label in order:
                runner = CudaGraphRunner(variants[label], capture_context=capture_context, compile=True)
                ms = median_ms(lambda: runner(input_ids=ids), 3, 30, CUDA)
                results.setdefault((label, batch), []).append(ms)
                print(f"round {round_number + 1}  batch {batch:>3}  {label:<26} {ms:8.3f} ms", flush=True)
                del runner
                torch.compiler.reset()
    print("\nsummary (ms, rounds 1 / 2)")
    for batch in BATCHES:
        row = {label: results[(label, batch)] for label in variants}
        cells = "  ".join(f"{label}: {' / '.join(f'{ms:.3f}' for ms in times)}" for label, times in row.items())
        print(f"batch {batch:>3}  {cells}")


if __name__ == "__main__":
    main()
