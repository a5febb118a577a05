#!/usr/bin/env bash
# GPU smokes of today's engine on tiny random models (no staging needed): the capture case that failed
# intermittently (bert int8, compile off) twice, RoBERTa and DistilBERT through their adapters, then the
# benchmark stage's run (compile on, the 2x2 matrix, interleaved harness).
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TWOFOUR_PLAN_CACHE=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuSPARSELt', torch.backends.cusparselt.version())"
run() { local name=$1 limit=$2; shift 2; local s=$(date +%s)
  timeout "$limit" python3 docs/results/2026-12-06-engine-smoke.py "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  echo "== $name ($*): exit $rc in $(( $(date +%s) - s )) s"
  grep -E "^(bert|roberta|distilbert) |relative error|^benchmark|Error|error:" "$OUT/$name.log" | cut -c1-400 | tail -4; }
run bert-int8-a "${LIMIT:-100}" bert int8 0 0
run bench "${BENCH_LIMIT:-240}" bert int8 1 1
grep -A200 "^benchmark" "$OUT/bench.log" | head -120
run roberta "${LIMIT:-100}" roberta int8 0 0
run bert-int8-b "${LIMIT:-100}" bert int8 0 0
