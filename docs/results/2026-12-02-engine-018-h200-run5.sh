#!/usr/bin/env bash
# Issue #18, run 5 (the third of three back-to-back device calls, after the cuSPARSELt 0.10 part copies):
# the plan, the eager benchmark after the eager host-time changes (Triton quantization launched directly,
# plan-cache calls without the custom op's dispatch), and the compiled-profile probe.
cp .cslt3/* /root/cslt/ && bash /root/cslt/assemble.sh || exit 1
export TWOFOUR_CUSPARSELT=/root/cslt/libcusparseLt.so.0 HF_HUB_OFFLINE=1 TQDM_MININTERVAL=15 PYTHONUNBUFFERED=1 \
  TWOFOUR_PLAN_CACHE=1 TORCHINDUCTOR_CACHE_DIR=/root/ind
SIZES="16 64 256"
# shellcheck disable=SC2086
python benchmarks/gpu_engine.py --only accelerate --work /root/w --precision int8 --batch-sizes $SIZES --warmup 3 \
  --repeats 20 --max-alg-id 47 --tuning-budget-s 15 --out "$OUT/accelerate.json" > "$OUT/accelerate.log" 2>&1
tail -25 "$OUT/accelerate.log"
# shellcheck disable=SC2086
python benchmarks/gpu_engine.py --only benchmark --work /root/w --precision int8 --batch-sizes $SIZES --warmup 5 \
  --repeats 30 --benchmark-modes eager --no-tutorial --out "$OUT/benchmark-eager.json" > "$OUT/benchmark-eager.log" 2>&1
tail -15 "$OUT/benchmark-eager.log"
timeout 200 python docs/results/2026-12-02-probe-compiled-profile.py --work /root/w --out "$OUT/probe.json" \
  > "$OUT/probe.log" 2>&1
tail -40 "$OUT/probe.log"
