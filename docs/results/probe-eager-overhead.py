"""Where the accelerated model's eager batch-16 time goes when its plan runs every layer dense there
(issue 30: the committed matrix's eager batch 16 read 0.93x, with the plan's eager variant all dense).

A bert-base shape (random weights, fp16, seq 384, input ids only, as stages/benchmark.py times it),
called eagerly (no compile, no CUDA graphs), built up one engine change at a time, interleaved in rounds
(engine/timing.py), each variant's speed over the plain model with its 95% interval:
- plain: transformers' model as the benchmark's dense (sdpa attention);
- fused_qkv: query, key and value as one Linear (engine/adapters.fuse_qkv);
- fused_attention: and the engine's sdpa mask handling (engine/attention.use_fused_attention);
- engine_dense: and every encoder Linear a SparseLinear whose kernel is dense at every bucket, with GELU's
  tanh form after the FFN-in Linears (Int8PassthroughGelu): the accelerated model's eager batch 16.
Then one profiled forward of each: CUDA kernels launched, their summed time, the host's wall time.
From the repository root, on a GPU: python docs/results/probe-eager-overhead.py [BATCH ...] (default 16)."""
import copy
import json
import sys
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForQuestionAnswering

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from engine.adapters import fuse_qkv  # noqa: E402
from engine.attention import use_fused_attention  # noqa: E402
from engine.kernels import Int8PassthroughGelu, SparseLinear  # noqa: E402
from engine.timing import interleaved, ratio_interval  # noqa: E402
from engine.tuning import random_ids  # noqa: E402


def all_dense_sparse_linears(model: torch.nn.Module, buckets: list[int]) -> torch.nn.Module:
    for layer in model.bert.encoder.layer:
        layer.intermediate.intermediate_act_fn = Int8PassthroughGelu()
        for owner in (layer.attention.self, layer.attention.output, layer.intermediate, layer.output):
            for name, child in list(owner.named_children()):
                if isinstance(child, torch.nn.Linear):
                    setattr(owner, name, SparseLinear(child, dict.fromkeys(buckets)))
    return model


def profiled(forward) -> dict:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        torch.cuda.synchronize()
        start = time.perf_counter()
        forward()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) * 1e3
    kernels = [event for event in profile.events() if event.device_type == torch.autograd.DeviceType.CUDA]
    return {"kernels": len(kernels), "kernel_ms": round(sum(e.device_time for e in kernels) / 1e3, 3),
            "wall_ms": round(wall_ms, 3)}


torch.manual_seed(0)
device = torch.device("cuda")
config = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    max_position_embeddings=512, attn_implementation="sdpa")
plain = BertForQuestionAnswering(config).to(device, torch.float16).eval()
fused = fuse_qkv(copy.deepcopy(plain))
attention = use_fused_attention(fuse_qkv(copy.deepcopy(plain)))
batches = [int(b) for b in sys.argv[1:]] or [16]
buckets = [batch * 384 for batch in batches]
models = {"plain": plain, "fused_qkv": fused, "fused_attention": attention,
          "engine_dense": all_dense_sparse_linears(use_fused_attention(fuse_qkv(copy.deepcopy(plain))), buckets)}
result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "seq": 384, "weights": "random"}
with torch.inference_mode():
    for batch in batches:
        ids = random_ids(batch, 384, config.vocab_size, device, seed=batch)
        reference = plain(input_ids=ids).start_logits
        rounds = interleaved({name: (lambda m=m: m(input_ids=ids)) for name, m in models.items()}, device,
                             warmup=5, rounds=10, calls=10)
        row = {}
        for name, model in models.items():
            row[name] = {"ms": round(rounds.median_ms(name), 3),
                         "max_logit_diff": round((model(input_ids=ids).start_logits - reference).abs().max().item(), 4),
                         **profiled(lambda m=model: m(input_ids=ids))}
            if name != "plain":
                interval = ratio_interval(rounds, name, "plain")
                row[name]["speedup"] = [round(interval.median, 3), round(interval.low, 3), round(interval.high, 3),
                                        "trusted" if interval.trusted else "untrusted"]
        result[f"bs{batch}"] = row
        print(batch, json.dumps(row), flush=True)
print(json.dumps(result))
