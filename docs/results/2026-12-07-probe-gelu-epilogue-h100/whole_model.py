"""Whole bert-base-shaped model (random weights: a shape probe, not a model result), fp16, compiled +
CUDA graphs as the benchmark times it, interleaved rounds (engine/timing.py), seq 384:
- dense as it comes against dense_gelu (engine/gelu_epilogue.py: cuBLASLt's GELU epilogue);
- the 8-bit dense models the benchmark times (int8: torch._int_mm, fp8: torch._scaled_mm with fast
  accumulation), compiled as it compiles them and with inductor's max-autotune, whose Triton matmul
  templates can take the dequantization, bias, GELU and the next quantization as their epilogue (the
  fusion torch's own 8-bit matmuls cannot take);
- fp8 dense with cuBLASLt's epilogue instead (engine/fp8_epilogue.py: GELU and the cast to fp8 in the
  FFN-in matmul), dense_fp8_epilogue.
From the repository root:
    python docs/results/2026-12-07-probe-gelu-epilogue-h100/whole_model.py [BATCH ...]   (default 16 256)
PROBE_VARIANTS (comma-separated names; default all) picks the variants: max-autotune of the fp8 model
benchmarks 106 choices per matmul shape (over a minute each on an H100).
Prints one line per batch size as it goes and the whole result as JSON last."""
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForQuestionAnswering

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from engine.adapters import fuse_qkv  # noqa: E402
from engine.attention import capture_context, use_fused_attention  # noqa: E402
from engine.common import relative_error  # noqa: E402
from engine.errors import typed_first_line  # noqa: E402
from engine.fp8_epilogue import fp8_epilogue_model  # noqa: E402
from engine.gelu_epilogue import gelu_epilogue_model  # noqa: E402
from engine.graphs import CudaGraphRunner  # noqa: E402
from engine.timing import interleaved, ratio_interval  # noqa: E402
from engine.tuning import random_ids  # noqa: E402
from stages.benchmark import fp8_model, int8_dense_model  # noqa: E402

AUTOTUNE = {"max_autotune": True, "triton.cudagraphs": False}  # the graphs are CudaGraphRunner's

torch.manual_seed(0)
device = torch.device("cuda")
config = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    max_position_embeddings=512, attn_implementation="sdpa")
dense = use_fused_attention(fuse_qkv(BertForQuestionAnswering(config).to(device, torch.float16).eval()))
calibration = {"input_ids": random_ids(16, 384, config.vocab_size, device, seed=1)}
int8 = int8_dense_model(dense, calibration, 0.8)  # strength: params.yaml accelerate.int8_smoothing
fp8 = fp8_model(dense, calibration)
models = {"dense": (dense, None), "dense_gelu": (gelu_epilogue_model(dense), None),
          "dense_int8": (int8, None), "dense_int8_autotune": (copy.deepcopy(int8), AUTOTUNE),
          "dense_fp8": (fp8, None), "dense_fp8_autotune": (copy.deepcopy(fp8), AUTOTUNE),
          "dense_fp8_epilogue": (fp8_epilogue_model(fp8), None)}  # its library is built and checked at its first call
if os.environ.get("PROBE_VARIANTS"):
    models = {name: models[name] for name in ["dense", *os.environ["PROBE_VARIANTS"].split(",")] if name in models}
result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "seq": 384, "weights": "random"}
for batch in [int(b) for b in sys.argv[1:]] or [16, 256]:
    ids = random_ids(batch, 384, config.vocab_size, device, seed=batch)
    runners, row = {}, {"compile_s": {}, "left_out": {}}
    with torch.inference_mode():
        reference = dense(input_ids=ids).start_logits
        for name, (model, options) in models.items():
            start = time.monotonic()
            try:
                compiled = torch.compile(model, dynamic=False, options=options) if options else model
                runner = CudaGraphRunner(compiled, capture_context=capture_context, compile=options is None)
                row[f"error_{name}"] = round(relative_error(reference, runner(input_ids=ids).start_logits), 5)
                runners[name] = runner
            except Exception as err:  # a probe: a variant inductor or the library refuses is left out, named
                row["left_out"][name] = typed_first_line(err)
            row["compile_s"][name] = round(time.monotonic() - start, 1)
        rounds = interleaved({name: (lambda r=r: r(input_ids=ids)) for name, r in runners.items()}, device,
                             warmup=3, rounds=10, calls=5)
    for name in runners:
        row[f"{name}_ms"] = round(rounds.median_ms(name), 3)
        if name != "dense":
            interval = ratio_interval(rounds, name, "dense")  # dense's time over this variant's
            row[f"speedup_{name}"] = [round(interval.median, 3), round(interval.low, 3), round(interval.high, 3),
                                      "trusted" if interval.trusted else "untrusted"]
    result[f"bs{batch}"] = row
    print(batch, json.dumps(row), flush=True)
    del runners
    torch.compiler.reset()
print(json.dumps(result))
