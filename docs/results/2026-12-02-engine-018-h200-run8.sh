#!/usr/bin/env bash
# Issue #18, run 8 (the third of three back-to-back device calls, after the cuSPARSELt 0.10 part copies):
# the plan with the int8_gelu variant (engine/planner.py) and 30 s
# of kernel timing per precision (the GELU-fed Linears calibrated unsmoothed, clipped), then the benchmark.
cp .cslt3/* /root/cslt/ && bash /root/cslt/assemble.sh || exit 1
export TWOFOUR_CUSPARSELT=/root/cslt/libcusparseLt.so.0 HF_HUB_OFFLINE=1 TQDM_MININTERVAL=15 PYTHONUNBUFFERED=1 \
  TWOFOUR_PLAN_CACHE=1 TORCHINDUCTOR_CACHE_DIR=/root/ind
SIZES="16 64 256"
# shellcheck disable=SC2086
python benchmarks/gpu_engine.py --only accelerate --work /root/w --precision int8 --batch-sizes $SIZES --warmup 3 \
  --repeats 20 --max-alg-id 47 --tuning-budget-s 30 --out "$OUT/accelerate.json" > "$OUT/accelerate.log" 2>&1
grep -A14 "whole model per batch size" "$OUT/accelerate.log"; grep -i "error\|Traceback" "$OUT/accelerate.log" | tail -5
# shellcheck disable=SC2086
python benchmarks/gpu_engine.py --only benchmark --work /root/w --precision int8 --batch-sizes $SIZES --warmup 5 \
  --repeats 30 --benchmark-modes eager compiled --no-tutorial --out "$OUT/benchmark.json" > "$OUT/benchmark.log" 2>&1
grep -A8 "== benchmark: latency" "$OUT/benchmark.log"; tail -3 "$OUT/benchmark.log"
