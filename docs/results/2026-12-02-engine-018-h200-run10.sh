#!/usr/bin/env bash
# Issue #18, run 10 (the third of three back-to-back device calls, after the cuSPARSELt 0.10 part copies):
# the plan, now also timed eagerly (eager kernels per batch size), 30 s of kernel timing per
# precision, then the compiled benchmark alone, median of 50. run10b.sh follows on the warm machine.
cp .cslt3/* /root/cslt/ && bash /root/cslt/assemble.sh || exit 1
export TWOFOUR_CUSPARSELT=/root/cslt/libcusparseLt.so.0 HF_HUB_OFFLINE=1 TQDM_MININTERVAL=15 PYTHONUNBUFFERED=1 \
  TWOFOUR_PLAN_CACHE=1 TORCHINDUCTOR_CACHE_DIR=/root/ind
SIZES="16 64 256"
# shellcheck disable=SC2086
timeout 420 python benchmarks/gpu_engine.py --only accelerate --work /root/w --precision int8 --batch-sizes $SIZES \
  --warmup 3 --repeats 20 --max-alg-id 47 --tuning-budget-s 30 --out "$OUT/accelerate.json" > "$OUT/accelerate.log" 2>&1
grep -A20 "whole model per batch size" "$OUT/accelerate.log"; grep -i "error\|Traceback\|int8_gelu:" "$OUT/accelerate.log" | tail -8
# shellcheck disable=SC2086
timeout 150 python benchmarks/gpu_engine.py --only benchmark --work /root/w --precision int8 --batch-sizes $SIZES \
  --warmup 5 --repeats 50 --benchmark-modes compiled --no-tutorial --out "$OUT/benchmark-compiled.json" \
  > "$OUT/benchmark-compiled.log" 2>&1
grep -A8 "== benchmark: latency" "$OUT/benchmark-compiled.log"; tail -3 "$OUT/benchmark-compiled.log"
