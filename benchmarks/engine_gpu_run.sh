#!/usr/bin/env bash
# The engine's GPU measurements, resumable across back-to-back device calls (each about 9.5 minutes),
# from the repository root (issue #30's targets: benchmarks/engine_gpu_summary.py): after the three
# cuSPARSELt part copies, run twice back to back
#
#   ENGINE_RUN_BUDGET_S=580 OUT=/some/dir bash benchmarks/engine_gpu_run.sh
#
# The state folder ENGINE_STATE (default /root/twofour-engine; it lasts while the machine stays warm)
# keeps what a call finished: each step runs in running/STEP and is renamed to done/STEP only when it
# exits 0, so a step that fails, times out or is killed with its call leaves no result and runs again
# in the next call; a step in done/ is skipped with a line saying so. The models and plan the
# accelerate step makes stay in done/accelerate/work for the later steps; the compile cache
# (TORCHINDUCTOR_CACHE_DIR) is in the state folder too, so a retried step reuses the compiles it got
# through. Each step starts only with its minimum time left (else it waits for the next call; later,
# shorter steps still run) and runs under its cap or the time left of ENGINE_RUN_BUDGET_S (default
# 580 s), less 15 s for the summary. Delete the state folder to start over.
#
# cuSPARSELt: TWOFOUR_CUSPARSELT (default /root/cslt/libcusparseLt.so.0, the 0.10 that
# ../shared/tools/cusparselt/prepare.sh packs) when that file exists, else the one torch links.
# The steps, in this order; each call copies the results of the steps done so far (at most 6 files)
# with summary.json and run.log to $OUT (8 files at most):
#   versions.json       device, driver, torch, CUDA, transformers, triton, cuSPARSELt loaded, plan cache
#                       (engine/plan_cache.py: used by the later steps only if it passes its check here)
#   cslt_plans-*.log    the compiler's whole output, only where the plan cache failed to build
#   accelerate.json     the plan: per layer and batch size dense / fp16 2:4 / int8 2:4, kernel timings,
#                       whole-model timings (dense fp16 vs each variant, compiled + CUDA graphs), errors
#   qa.json             engine.qa latency, accelerated vs dense
#   stream.json         the variable-shape request stream, dense vs accelerated, bucketed alike
#   benchmark.json      latency per batch size interleaved, compiled (the 2x2 matrix: dense fp16, 8-bit
#                       dense, fp16 2:4, accelerated) and, with the plan cache on, eager
#   profile.json        benchmarks/engine_profile.py --matrix at ENGINE_PROFILE_BATCH_SIZES (16 256)
#   (run.log only)      `python -m engine.qa` end to end on the accelerated model
#   cusparselt-0.8.json the cuSPARSELt torch links, probed on one Linear
#   summary.json        the figures beside the targets (also printed at the end)
#   run.log             everything printed, by every call
# A first call does versions, accelerate (~330 s), qa and the short steps; the second the stream and
# the benchmark, a third the profile. ENGINE_RUN_SKIP="qa stream qa-cli" (steps by name) leaves steps
# out: issue 30's figures (versions, accelerate, benchmark, profile) then take two calls. Even batch
# sizes 16 and 256 with ENGINE_RUN_TUNING_S=8 do not fit one call: the benchmark compiles each cell of
# the matrix at each batch size (docs/results/2026-12-07-engine-plan-h100-cslt010).
set -uo pipefail
: "${OUT:?set OUT to the directory the results go to}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY="${PY:-$(command -v python || command -v python3)}"
BUDGET_S="${ENGINE_RUN_BUDGET_S:-580}"
BATCH_SIZES="${ENGINE_RUN_BATCH_SIZES:-16 64 256}"
TUNING_S="${ENGINE_RUN_TUNING_S:-15}"  # config timing per precision in the accelerate step
PROFILE_BATCH_SIZES="${ENGINE_PROFILE_BATCH_SIZES:-16 256}"
SKIP="${ENGINE_RUN_SKIP:-}"
STATE="${ENGINE_STATE:-/root/twofour-engine}"  # the models (~1.3 GB): never under $OUT
RUNNING="$STATE/running"
DONE="$STATE/done"
WORK="$DONE/accelerate/work"
LOG="$STATE/run.log"
SUMMARY_S=15
MAX_RESULT_FILES=6  # $OUT takes 8 files: these, summary.json and run.log
rm -rf "$RUNNING"  # what a call killed mid-step left
mkdir -p "$RUNNING" "$DONE"
export TORCHINDUCTOR_CACHE_DIR="$STATE/inductor-cache"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_MININTERVAL=15 PYTHONUNBUFFERED=1
echo "== call of $(date -u '+%F %T') UTC, budget ${BUDGET_S} s, state $STATE" | tee -a "$LOG"
CSLT="${TWOFOUR_CUSPARSELT:-/root/cslt/libcusparseLt.so.0}"
if [ -f "$CSLT" ]; then
  export TWOFOUR_CUSPARSELT="$CSLT"
else
  echo "warning: $CSLT not found: running the cuSPARSELt torch links" | tee -a "$LOG"
  unset TWOFOUR_CUSPARSELT
fi

left() { echo $((BUDGET_S - SECONDS - SUMMARY_S)); }

STEPS=()  # this call's steps, in order: whose results go to $OUT
# The results of the steps done, in step order (at most MAX_RESULT_FILES), and run.log, to $OUT.
copy_results() {
  local name file copied=0
  for name in "${STEPS[@]}"; do
    for file in "$DONE/$name"/*.json "$DONE/$name"/*.log; do
      [ -f "$file" ] || continue
      if [ "$copied" -lt "$MAX_RESULT_FILES" ]; then
        cp "$file" "$OUT/" && copied=$((copied + 1))
      else
        echo "== not copied to \$OUT (8 files at most): $file" | tee -a "$LOG"
      fi
    done
  done
  cp "$LOG" "$OUT/"
}

left_out() { [[ " $SKIP " == *" $1 "* ]]; }  # is step $1 named in ENGINE_RUN_SKIP

# step NAME MIN_S CAP_S COMMAND...: COMMAND writes its results in $RUNNING/NAME; it starts only with
# MIN_S left and runs under CAP_S or the time left; done/NAME only if it exits 0. A step named in
# ENGINE_RUN_SKIP is left out: not run, not waited for.
step() {
  local name="$1" min="$2" cap="$3"; shift 3
  if left_out "$name"; then
    echo "== $name: left out (ENGINE_RUN_SKIP)" | tee -a "$LOG"
    return 0
  fi
  STEPS+=("$name")
  if [ -d "$DONE/$name" ]; then
    echo "== $name: done in an earlier call, skipped" | tee -a "$LOG"
    return 0
  fi
  if [ "$(left)" -lt "$min" ]; then
    echo "== $name: needs ${min} s, $(left) s left: for the next call" | tee -a "$LOG"
    return 1
  fi
  local limit=$(( $(left) < cap ? $(left) : cap ))
  rm -rf "${RUNNING:?}/$name"
  mkdir -p "$RUNNING/$name"
  echo "== $name (limit ${limit} s, at ${SECONDS} s): $*" | tee -a "$LOG"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local status="${PIPESTATUS[0]}"
  if [ "$status" = 0 ]; then
    mv "$RUNNING/$name" "$DONE/$name"
  else
    rm -rf "${RUNNING:?}/$name"  # nothing half-written: the step runs again in the next call
  fi
  echo "== $name: exit $status after ${SECONDS} s$([ "$status" = 124 ] && echo ' (timed out)')" | tee -a "$LOG"
  copy_results
  return "$status"
}

# Versions, then the optional plan cache (engine/plan_cache.py): built and checked against
# torch._cslt_sparse_mm here, in a process of its own; only if that passes do the later steps use it
# (TWOFOUR_PLAN_CACHE=1) and time eager forwards too (without it an eager fp16 2:4 forward plans every
# call: ~10 s). The built library stays in ~/.cache/twofour for the next call.
step versions-and-plan-cache 30 60 "$PY" - "$RUNNING/versions-and-plan-cache/versions.json" <<'PYTHON'
import json, platform, subprocess, sys
from engine.runtime import load_cusparselt
load_cusparselt()  # $TWOFOUR_CUSPARSELT, before torch
import torch, transformers
from engine.plan_cache import enable
from engine.runtime import cusparselt_facts
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = None
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,power.limit,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip()
except (OSError, subprocess.SubprocessError) as err:
    smi = f"nvidia-smi: {err}"
facts = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
         "transformers": transformers.__version__, "triton": triton_version, "nvidia_smi": smi,
         "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
         "compute_capability": torch.cuda.get_device_capability() if torch.cuda.is_available() else None,
         "cusparselt": cusparselt_facts()}
print(json.dumps(facts, indent=2), flush=True)
reason = enable()
facts["plan_cache"] = reason or "on: checked against torch._cslt_sparse_mm"
open(sys.argv[1], "w").write(json.dumps(facts, indent=2))
print(f"plan cache: {facts['plan_cache']}")
if reason and "(whole output: " in reason:  # the compiler's whole output comes back in $OUT
    import os, shutil
    shutil.copy(reason.rsplit("(whole output: ", 1)[1].rstrip(")"), os.path.dirname(sys.argv[1]))
PYTHON
MODES="compiled"
if grep -q '"plan_cache": "on' "$DONE/versions-and-plan-cache/versions.json" 2>/dev/null; then
  export TWOFOUR_PLAN_CACHE=1
  MODES="eager compiled"
fi

# The plan first (in the step's own folder, so a half-built one is never used): everything after it
# runs on the models and plan it leaves in $WORK. Kernel timing is kept short here (TUNING_S of config
# timing per precision, alg_ids probed up to 47: the fastest on 0.10 at 6144 tokens were 42 and 46),
# cuSPARSELt's search picking first where it works; the whole-model variants and the output check
# (compiles, captures) take the rest of the time (~330 s in all on the H200).
# shellcheck disable=SC2086  # BATCH_SIZES is a list
step accelerate 360 450 "$PY" benchmarks/gpu_engine.py --only accelerate --work "$RUNNING/accelerate/work" \
  --precision int8 --batch-sizes $BATCH_SIZES --warmup 3 --repeats 20 --max-alg-id 47 --tuning-budget-s "$TUNING_S" \
  --out "$RUNNING/accelerate/accelerate.json"
if [ -d "$WORK" ]; then
  step qa 60 120 "$PY" benchmarks/engine_qa_latency.py --work "$WORK" --questions 4 --repeats 10 \
    --out "$RUNNING/qa/qa.json"
  # Four buckets a model, each a compile and a capture (eight in all; a retry reuses the compile cache).
  step stream 240 450 "$PY" benchmarks/engine_stream.py --work "$WORK" --requests 24 --passes 10 \
    --batch-buckets 16 256 --seq-buckets 192 384 --out "$RUNNING/stream/stream.json"
  # The matrix compiles each of its cells at each batch size, on the host: it may take a call of its own
  # (a retry reuses the compiles a cut-off try got through).
  # shellcheck disable=SC2086
  step benchmark 240 560 "$PY" benchmarks/gpu_engine.py --only benchmark --work "$WORK" --precision int8 \
    --batch-sizes $BATCH_SIZES --warmup 3 --repeats 20 --benchmark-modes $MODES --no-tutorial \
    --out "$RUNNING/benchmark/benchmark.json"
  # Where each model's GPU time goes (up to seven models a batch size, each compiled afresh).
  # shellcheck disable=SC2086
  step profile 150 400 "$PY" benchmarks/engine_profile.py --work "$WORK" --batch-sizes $PROFILE_BATCH_SIZES \
    --matrix --steps 5 --out "$RUNNING/profile/profile.json"
  # The CLI as a user runs it, end to end (its wall time is in run.log).
  step qa-cli 60 60 "$PY" -m engine.qa --model "$WORK/accelerated" --question "Where was Ada born?" \
    --context "Ada Lovelace was born in London in 1815 and worked with Charles Babbage."
else
  WAITING="$(for name in qa stream benchmark profile qa-cli; do left_out "$name" || echo -n "$name "; done)"
  echo "== $WAITING: waiting for the accelerate step" | tee -a "$LOG"
fi
if [ -n "${TWOFOUR_CUSPARSELT:-}" ]; then
  step cusparselt-0.8 40 60 env -u TWOFOUR_CUSPARSELT "$PY" benchmarks/cusparselt_probe.py \
    --budget-s 5 --out "$RUNNING/cusparselt-0.8/cusparselt-0.8.json"
fi
copy_results
"$PY" benchmarks/engine_gpu_summary.py "$OUT" 2>&1 | tee -a "$LOG"
pending="$(for name in "${STEPS[@]}"; do [ -d "$DONE/$name" ] || echo -n "$name "; done)${WAITING:-}"
echo "== call done after ${SECONDS} s; steps left for the next call: ${pending:-none}; files in $OUT: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$LOG"
cp "$LOG" "$OUT/"
