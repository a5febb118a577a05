#!/bin/bash
# After the engine move: the GPU engine once (int8 2:4 plan, cuSPARSELt 0.8), then SQuAD zero-shot per method.
set -o pipefail
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
timeout 250 python3 benchmarks/gpu_engine.py --precision int8 --batch-sizes 16 64 256 --max-alg-id 7 --warmup 3 --repeats 20 \
  --out $OUT/engine-int8.json > $OUT/engine-int8.log 2>&1; echo "gpu_engine rc=$?"; tail -25 $OUT/engine-int8.log
SEEDS=1 timeout 150 bash .gpu/run.sh --zero-shot-only -S train.epochs=1 -S train.batch_size=64 -S train.learning_rate=0.00015 \
  -S train.warmup_ratio=0.1 -S prune.sequential=true -S evaluate.batch_size=256; echo "squad rc=$?"
