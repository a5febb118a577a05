#!/usr/bin/env bash
# Issue #18, run 7 (the third of three back-to-back device calls, after the cuSPARSELt 0.10 part copies):
# the GELU-epilogue probe on 0.10, then the plan with the int8_gelu variant (engine/planner.py) and 30 s
# of kernel timing per precision, then the benchmark, compiled and eager.
cp .cslt3/* /root/cslt/ && bash /root/cslt/assemble.sh || exit 1
export TWOFOUR_CUSPARSELT=/root/cslt/libcusparseLt.so.0 HF_HUB_OFFLINE=1 TQDM_MININTERVAL=15 PYTHONUNBUFFERED=1 \
  TWOFOUR_PLAN_CACHE=1 TORCHINDUCTOR_CACHE_DIR=/root/ind
SIZES="16 64 256"
LD_PRELOAD=/root/cslt/libcusparseLt.so.0 python docs/results/2026-12-02-engine-018-probe-gelu-epilogue.py \
  --max-alg-id 47 --out "$OUT/probe-gelu-epilogue-0.10.json" > "$OUT/probe-gelu-epilogue-0.10.log" 2>&1
tail -4 "$OUT/probe-gelu-epilogue-0.10.log"
# shellcheck disable=SC2086
python benchmarks/gpu_engine.py --only accelerate --work /root/w --precision int8 --batch-sizes $SIZES --warmup 3 \
  --repeats 20 --max-alg-id 47 --tuning-budget-s 30 --out "$OUT/accelerate.json" > "$OUT/accelerate.log" 2>&1
grep -A14 "whole model per batch size" "$OUT/accelerate.log"; grep -i "error\|Traceback" "$OUT/accelerate.log" | tail -5
# shellcheck disable=SC2086
python benchmarks/gpu_engine.py --only benchmark --work /root/w --precision int8 --batch-sizes $SIZES --warmup 5 \
  --repeats 30 --benchmark-modes eager compiled --no-tutorial --out "$OUT/benchmark.json" > "$OUT/benchmark.log" 2>&1
grep -A8 "== benchmark: latency" "$OUT/benchmark.log"; tail -3 "$OUT/benchmark.log"
