#!/bin/bash
# SQuAD seeds on the lent GPU, in as many calls as it takes: the state lives in /root/twofour (kept
# while the machine stays warm between calls), squad_seeds.py resumes where the last call stopped.
# The first call carries .whl (datasets wheels) and .gpu (the SQuAD/XQuAD files, an fp16 copy of the
# embedded model); later calls carry .whl only. FINETUNE_EPOCHS (default 4): the 2026-12-02 run; the
# 2026-12-01 run was FINETUNE_EPOCHS=2.5.
set -o pipefail
STATE=/root/twofour
mkdir -p $STATE/out
[ -d .gpu/data ] && cp -rn .gpu/data .gpu/embedded16 $STATE/
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
export PYTHONPATH=/tmp/site TQDM_DISABLE=1 TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
python3 -c "import datasets, torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'datasets', datasets.__version__, 'cusparselt', torch.backends.cusparselt.version())"
[ -d $STATE/embedded ] || python3 -c "
import torch
from transformers import AutoModel, AutoTokenizer
AutoModel.from_pretrained('$STATE/embedded16', dtype=torch.float32).save_pretrained('$STATE/embedded')
AutoTokenizer.from_pretrained('$STATE/embedded16').save_pretrained('$STATE/embedded')" || exit 4
timeout ${BUDGET_S:-540} python3 benchmarks/squad_seeds.py --data-dir $STATE/data --train train-v1.1.json.gz \
  --validation dev-v1.1.json.gz --extra-validation xquad.en.json --seeds 1 2 3 --int8 \
  --out $STATE/out --work $STATE/work -S model.name=$STATE/embedded \
  -S train.epochs=2 -S train.batch_size=64 -S train.learning_rate=0.00015 -S train.warmup_ratio=0.1 \
  -S prune.method=sparsegpt -S prune.sequential=true \
  -S finetune.epochs=${FINETUNE_EPOCHS:-4} -S finetune.batch_size=64 -S finetune.learning_rate=0.0001 -S finetune.warmup_ratio=0.05 \
  -S finetune.distill=true -S finetune.distill_alpha=0.9 -S finetune.distill_hidden=10 \
  -S evaluate.batch_size=256 > $STATE/out/driver.log 2>&1
echo "squad_seeds rc=$?"
tail -25 $STATE/out/driver.log
for f in $STATE/out/results.jsonl $STATE/out/driver.log $STATE/out/seed-*.log; do cp "$f" $OUT/; done
ls $STATE/work
