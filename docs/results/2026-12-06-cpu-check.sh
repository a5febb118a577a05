#!/usr/bin/env bash
# Issue #33 on a CPU of another make: the default `dvc repro -f` (fp32, as params.yaml says) on the
# device host's Intel Xeon, which has AVX512-BF16 and AMX, the GPU hidden. Runs beside the GPU pipeline
# (docs/results/2026-12-06-gpu-pipeline.sh, which installs the carried packages first) on cores
# $CPUS (default 8-15),
# in a copy of the checkout so that the two `dvc repro` do not share a DVC lock; then compares its
# scores with the committed ones (made on a 2-core AMD EPYC).
#   setsid bash docs/results/2026-12-06-cpu-check.sh > /root/tw/out/cpu-check.log 2>&1 &
set -uo pipefail
W=/root/cpucheck
rm -rf "$W" && mkdir -p "$W"
tar --exclude=./.git --exclude='./.stage*' --exclude=./.whl --exclude='./.cslt*' --exclude=./gpu/features \
    --exclude=./gpu/models --exclude=./gpu/.checkpoints --exclude=./.dvc/cache --exclude=./data/squad-v1.1 \
    -cf - . | tar -xf - -C "$W"
cd "$W" || exit 1
cp metrics/scores.json committed-scores.json
python3 -m dvc config --local core.no_scm true
export CUDA_VISIBLE_DEVICES= HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 PREFECT_HOME=$W/.prefect
grep -m1 "model name" /proc/cpuinfo; grep -o -w -m1 -E "avx512_bf16|amx_bf16" /proc/cpuinfo | sort -u | tr '\n' ' '; echo
start=$(date +%s)
taskset -c "${CPUS:-8-15}" python3 -m dvc repro -f
echo "dvc repro -f exit $? after $(( $(date +%s) - start )) s on cores ${CPUS:-8-15}"
python3 - <<'PY'
import json
committed, here = (json.load(open(p)) for p in ("committed-scores.json", "metrics/scores.json"))
for metric in ("f1", "em"):
    for variant, value in committed[metric].items():
        now = here[metric].get(variant)
        print(f"{metric} {variant:12} committed {value:7.3f}  here {now:7.3f}  diff {now - value:+.3f}")
for report in ("train_baseline", "finetune_sparse"):
    facts = json.load(open(f"reports/{report}.json"))
    print(report, facts.get("precision"), {key: facts["run"].get(key) for key in
          ("cpu_model", "cpu_flags", "cpu_threads", "wall_s", "torch", "transformers")})
PY
