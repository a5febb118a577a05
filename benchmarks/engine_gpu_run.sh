#!/usr/bin/env bash
# Issue #18's GPU measurements in one time-limited run (about 9.5 minutes: a whole device call), from the repository root:
#
#   OUT=/some/dir bash benchmarks/engine_gpu_run.sh
#
# cuSPARSELt: TWOFOUR_CUSPARSELT (default /root/cslt/libcusparseLt.so.0, the 0.10 that
# ../shared/tools/cusparselt/prepare.sh packs) when that file exists, else the one torch links.
# The steps, in this order, each under its own timeout (its cap, or what is left of ENGINE_RUN_BUDGET_S,
# default 580 s), each saving as it goes, so a failure or a hang loses only that step; at most 8 files
# in $OUT:
#   versions.json       device, driver, torch, CUDA, transformers, triton, cuSPARSELt loaded, plan cache
#                       (engine/plan_cache.py: used by the later steps only if it passes its check here)
#   cslt_plans-*.log    the compiler's whole output, only where the plan cache failed to build
#   accelerate.json     the plan: per layer and batch size dense / fp16 2:4 / int8 2:4, kernel timings,
#                       whole-model timings (dense fp16 vs each variant, compiled + CUDA graphs), errors
#   stream.json         the variable-shape request stream, dense vs accelerated, bucketed alike
#   qa.json             engine.qa latency, accelerated vs dense
#   benchmark.json      latency per batch size, compiled (dense fp16, dense fp8, accelerated) and, with
#                       the plan cache on, eager
#   (run.log only)      `python -m engine.qa` end to end on the accelerated model (only if 75 s are left)
#   cusparselt-0.8.json the cuSPARSELt torch links, probed on one Linear (only if 50 s are left)
#   summary.json        the figures beside the targets (also printed at the end)
#   run.log             everything printed
set -uo pipefail
: "${OUT:?set OUT to the directory the results go to}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY="$(command -v python || command -v python3)"
BUDGET_S="${ENGINE_RUN_BUDGET_S:-580}"
BATCH_SIZES="${ENGINE_RUN_BATCH_SIZES:-16 64 256}"
WORK="$(mktemp -d)"  # the models (~1.3 GB): never under $OUT
LOG="$OUT/run.log"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_MININTERVAL=15 PYTHONUNBUFFERED=1
CSLT="${TWOFOUR_CUSPARSELT:-/root/cslt/libcusparseLt.so.0}"
if [ -f "$CSLT" ]; then
  export TWOFOUR_CUSPARSELT="$CSLT"
else
  echo "warning: $CSLT not found: running the cuSPARSELt torch links" | tee -a "$LOG"
  unset TWOFOUR_CUSPARSELT
fi

left() { echo $((BUDGET_S - SECONDS)); }

# step NAME CAP_S COMMAND...: runs COMMAND under timeout (CAP_S or the time left, less 15 s for the summary)
step() {
  local name="$1" cap="$2"; shift 2
  local limit=$(( $(left) - 15 < cap ? $(left) - 15 : cap ))
  if [ "$limit" -lt 10 ]; then
    echo "== $name: skipped, $(left) s left" | tee -a "$LOG"
    return 1
  fi
  echo "== $name (limit ${limit} s, at ${SECONDS} s): $*" | tee -a "$LOG"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local status="${PIPESTATUS[0]}"
  echo "== $name: exit $status after ${SECONDS} s$([ "$status" = 124 ] && echo ' (timed out)')" | tee -a "$LOG"
  return "$status"
}

# Versions, then the optional plan cache (engine/plan_cache.py): built and checked against
# torch._cslt_sparse_mm here, in a process of its own; only if that passes do the later steps use it
# (TWOFOUR_PLAN_CACHE=1) and time eager forwards too (without it an eager fp16 2:4 forward plans every
# call: ~10 s).
MODES="compiled"
if step versions-and-plan-cache 60 "$PY" - "$OUT/versions.json" <<'EOF'
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
open(sys.argv[1], "w").write(json.dumps(facts, indent=2))
print(json.dumps(facts, indent=2), flush=True)
reason = enable()
facts["plan_cache"] = reason or "on: checked against torch._cslt_sparse_mm"
open(sys.argv[1], "w").write(json.dumps(facts, indent=2))
print(f"plan cache: {facts['plan_cache']}")
if reason and "(whole output: " in reason:  # the compiler's whole output comes back in $OUT
    import os, shutil
    shutil.copy(reason.rsplit("(whole output: ", 1)[1].rstrip(")"), os.path.dirname(sys.argv[1]))
sys.exit(0 if reason is None else 3)
EOF
then
  export TWOFOUR_PLAN_CACHE=1
  MODES="eager compiled"
fi

# The plan first: everything after it runs on the models and plan it leaves in $WORK. Then the new
# serving paths (stream, QA), then the compiled benchmark (dense fp8) with the time that is left.
# Kernel timing is kept short here (15 s of config timing per precision, alg_ids probed up to 47: the
# fastest on 0.10 at 6144 tokens were 42 and 46), cuSPARSELt's search picking first where it works;
# the whole-model variants and the output check (compiles, captures) take the rest of the time.
# shellcheck disable=SC2086  # BATCH_SIZES is a list
step accelerate 380 "$PY" benchmarks/gpu_engine.py --only accelerate --work "$WORK" --precision int8 \
  --batch-sizes $BATCH_SIZES --warmup 3 --repeats 20 --max-alg-id 47 --tuning-budget-s 15 \
  --out "$OUT/accelerate.json"
# Four buckets a model (each a compile and a capture; the 384 ones may come from the compile cache).
step stream 120 "$PY" benchmarks/engine_stream.py --work "$WORK" --requests 24 --passes 3 \
  --batch-buckets 16 256 --seq-buckets 192 384 --out "$OUT/stream.json"
step qa 60 "$PY" benchmarks/engine_qa_latency.py --work "$WORK" --questions 4 --repeats 10 --out "$OUT/qa.json"
# shellcheck disable=SC2086
step benchmark "$BUDGET_S" "$PY" benchmarks/gpu_engine.py --only benchmark --work "$WORK" --precision int8 \
  --batch-sizes $BATCH_SIZES --warmup 3 --repeats 20 --benchmark-modes $MODES --no-tutorial \
  --out "$OUT/benchmark.json"
if [ "$(left)" -ge 75 ]; then  # the CLI as a user runs it, end to end (its wall time is in run.log)
  step qa-cli 60 "$PY" -m engine.qa --model "$WORK/accelerated" --question "Where was Ada born?" \
    --context "Ada Lovelace was born in London in 1815 and worked with Charles Babbage."
fi
if [ -n "${TWOFOUR_CUSPARSELT:-}" ] && [ "$(left)" -ge 50 ]; then
  step cusparselt-0.8 "$(( $(left) - 15 ))" env -u TWOFOUR_CUSPARSELT "$PY" benchmarks/cusparselt_probe.py \
    --budget-s 5 --out "$OUT/cusparselt-0.8.json"
fi
"$PY" benchmarks/engine_gpu_summary.py "$OUT" 2>&1 | tee -a "$LOG"
rm -rf "$WORK"
echo "== done after ${SECONDS} s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')" | tee -a "$LOG"
