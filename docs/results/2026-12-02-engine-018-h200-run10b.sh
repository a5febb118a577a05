#!/usr/bin/env bash
# Issue #18, run 10 continued (the call right after run10.sh, the machine still warm): the eager benchmark
# in its own process (median of 50; the accelerated model with the plan's eager kernels), then the
# variable-shape stream.
[ -f /root/cslt/libcusparseLt.so.0 ] && [ -d /root/w/accelerated ] || { echo "machine was released: /root is gone"; exit 3; }
export TWOFOUR_CUSPARSELT=/root/cslt/libcusparseLt.so.0 HF_HUB_OFFLINE=1 TQDM_MININTERVAL=15 PYTHONUNBUFFERED=1 \
  TWOFOUR_PLAN_CACHE=1 TORCHINDUCTOR_CACHE_DIR=/root/ind
timeout 120 python benchmarks/gpu_engine.py --only benchmark --work /root/w --precision int8 --batch-sizes 16 64 256 \
  --warmup 5 --repeats 50 --benchmark-modes eager --no-tutorial --out "$OUT/benchmark-eager.json" \
  > "$OUT/benchmark-eager.log" 2>&1
grep -A8 "== benchmark: latency" "$OUT/benchmark-eager.log"; grep "warning\|Error" "$OUT/benchmark-eager.log"
timeout 240 python benchmarks/engine_stream.py --work /root/w --requests 24 --passes 3 --batch-buckets 16 256 \
  --seq-buckets 192 384 --out "$OUT/stream.json" > "$OUT/stream.log" 2>&1
tail -3 "$OUT/stream.log" | cut -c1-400
