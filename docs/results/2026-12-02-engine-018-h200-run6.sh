#!/usr/bin/env bash
# Issue #18, run 6 (the third of three back-to-back device calls, after the cuSPARSELt 0.10 part copies):
# the plan with the int8_fused whole-model variant (engine/planner.py) and 30 s of kernel timing per
# precision, then the benchmark, compiled and eager.
cp .cslt3/* /root/cslt/ && bash /root/cslt/assemble.sh || exit 1
export TWOFOUR_CUSPARSELT=/root/cslt/libcusparseLt.so.0 HF_HUB_OFFLINE=1 TQDM_MININTERVAL=15 PYTHONUNBUFFERED=1 \
  TWOFOUR_PLAN_CACHE=1 TORCHINDUCTOR_CACHE_DIR=/root/ind
SIZES="16 64 256"
# shellcheck disable=SC2086
python benchmarks/gpu_engine.py --only accelerate --work /root/w --precision int8 --batch-sizes $SIZES --warmup 3 \
  --repeats 20 --max-alg-id 47 --tuning-budget-s 30 --out "$OUT/accelerate.json" > "$OUT/accelerate.log" 2>&1
grep -A12 "whole model per batch size" "$OUT/accelerate.log"
# shellcheck disable=SC2086
python benchmarks/gpu_engine.py --only benchmark --work /root/w --precision int8 --batch-sizes $SIZES --warmup 5 \
  --repeats 30 --benchmark-modes eager compiled --no-tutorial --out "$OUT/benchmark.json" > "$OUT/benchmark.log" 2>&1
grep -A8 "== benchmark: latency" "$OUT/benchmark.log"
# The call right after (machine still warm, /root/w kept): the compiled benchmark again, median of 50:
#   python benchmarks/gpu_engine.py --only benchmark --work /root/w --precision int8 --batch-sizes 16 64 256 \
#     --warmup 5 --repeats 50 --benchmark-modes compiled --no-tutorial --out "$OUT/benchmark-compiled-2.json"
