"""GPU smoke of today's engine on tiny random models: accelerate (plan), load_accelerated vs masked dense,
and optionally the benchmark stage's run (2x2 matrix, interleaved harness).
usage: python3 docs/results/2026-12-06-engine-smoke.py FAMILY PRECISION COMPILE BENCH   e.g. bert int8 0 0 / bert int8 1 1 / roberta int8 0 0"""
import json, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, ".")
import torch
from transformers import (BertConfig, BertForQuestionAnswering, DistilBertConfig, DistilBertForQuestionAnswering,
                          RobertaConfig, RobertaForQuestionAnswering)
import yaml
from stages.params import validate
from stages import accelerate, benchmark
from engine.plan import load_accelerated, inference_model
from engine.adapters import encoder_linears
from engine.config import EngineConfig
from engine.common import relative_error

family, precision, compile_on, bench = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
torch.manual_seed(0)
work = Path(tempfile.mkdtemp())
if family == "bert":
    model = BertForQuestionAnswering(BertConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                                                intermediate_size=1024, max_position_embeddings=512))
elif family == "roberta":
    model = RobertaForQuestionAnswering(RobertaConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                                                      intermediate_size=1024, max_position_embeddings=514))
else:
    model = DistilBertForQuestionAnswering(DistilBertConfig(dim=256, n_layers=2, n_heads=4, hidden_dim=1024))
model.save_pretrained(work / "dense")
with torch.no_grad():
    for name, linear in encoder_linears(model).items():
        w = linear.weight.view(-1, 4)
        keep = w.abs().topk(2, dim=1).indices
        w.mul_(torch.zeros_like(w, dtype=torch.bool).scatter_(1, keep, True))
model.save_pretrained(work / "sparse")
raw = yaml.safe_load(Path("params.yaml").read_text())
raw["model"].update(name=str(work / "sparse"), watch=str(work / "sparse"))
raw["accelerate"].update(mode="all", precision=precision, compile=compile_on, max_alg_id=15)
raw["benchmark"].update(batch_sizes=[16, 64], seq_length=128, compile=True, warmup=2, repeats=20)
params = validate(raw)
(work / "accelerated").mkdir()
start = time.perf_counter()
metrics = accelerate.run(params, work / "sparse", work / "accelerated", tuning_budget_s=4)
print(family, precision, "compile", compile_on, "accelerate", round(time.perf_counter() - start, 1), "s;",
      {k: metrics[k] for k in ("backend", "layers_2of4", "by_batch", "output_relative_error") if k in metrics})
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
accelerated = load_accelerated(work / "accelerated", device, config=EngineConfig.from_env())
dense = inference_model(work / "sparse", device, torch.float16 if device.type == "cuda" else torch.float32)
ids = torch.randint(1000, 2000, (16, 128), device=device)
with torch.inference_mode():
    err = relative_error(dense(input_ids=ids).start_logits.float(), accelerated(input_ids=ids).start_logits.float())
plan = json.loads((work / "accelerated/plan.json").read_text())
print("load_accelerated vs masked dense fp16, start logits relative error:", round(err, 5),
      "| adapter", plan.get("adapter"), "| engine", plan.get("engine"))
if bench:
    start = time.perf_counter()
    result, _ = benchmark.run(params, work / "dense", work / "accelerated", tutorial=False)
    print("benchmark", round(time.perf_counter() - start, 1), "s")
    print(json.dumps({k: result.get(k) for k in ("latency_ms", "speedup_interval", "matrix", "factors", "matrix_absent",
                                                   "samples_per_s", "noise")}, indent=1, default=str)[:6000])
