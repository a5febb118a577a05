"""Whole bert-base-shaped model (random weights: a shape probe, not a model result), fp16, compiled +
CUDA graphs as the benchmark times it: dense as it comes against dense_gelu (engine/gelu_epilogue.py),
interleaved rounds (engine/timing.py), at batch 16 and 256, seq 384. From the repository root:
    python docs/results/2026-12-07-probe-gelu-epilogue-h100/whole_model.py"""
import json
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertForQuestionAnswering

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from engine.adapters import fuse_qkv  # noqa: E402
from engine.attention import capture_context, use_fused_attention  # noqa: E402
from engine.common import relative_error  # noqa: E402
from engine.gelu_epilogue import gelu_epilogue_model  # noqa: E402
from engine.graphs import CudaGraphRunner  # noqa: E402
from engine.timing import interleaved, ratio_interval  # noqa: E402
from engine.tuning import random_ids  # noqa: E402

torch.manual_seed(0)
device = torch.device("cuda")
config = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    max_position_embeddings=512, attn_implementation="sdpa")
dense = use_fused_attention(fuse_qkv(BertForQuestionAnswering(config).to(device, torch.float16).eval()))
fused = gelu_epilogue_model(dense)
result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
for batch in (16, 256):
    ids = random_ids(batch, 384, config.vocab_size, device, seed=batch)
    runners = {name: CudaGraphRunner(model, capture_context=capture_context, compile=True)
               for name, model in (("dense", dense), ("dense_gelu", fused))}
    with torch.inference_mode():
        error = relative_error(runners["dense"](input_ids=ids).start_logits, runners["dense_gelu"](input_ids=ids).start_logits)
        rounds = interleaved({name: (lambda r=r: r(input_ids=ids)) for name, r in runners.items()}, device,
                             warmup=3, rounds=10, calls=5)
    interval = ratio_interval(rounds, "dense_gelu", "dense")
    result[f"bs{batch}"] = {"dense_ms": round(rounds.median_ms("dense"), 3),
                            "dense_gelu_ms": round(rounds.median_ms("dense_gelu"), 3),
                            "speedup": [round(interval.median, 3), round(interval.low, 3), round(interval.high, 3)],
                            "trusted": interval.trusted, "relative_error_start_logits": round(error, 5)}
    print(batch, result[f"bs{batch}"], flush=True)
    del runners
    torch.compiler.reset()
print(json.dumps(result))
