#!/usr/bin/env bash
# Issue #18, run 5 continued (the call right after run5.sh, the machine still warm): compiled benchmark
# and the variable-shape stream (its output check against the accelerated model's own weights).
[ -f /root/cslt/libcusparseLt.so.0 ] && [ -d /root/w/accelerated ] || { echo "machine was released: /root is gone"; exit 3; }
export TWOFOUR_CUSPARSELT=/root/cslt/libcusparseLt.so.0 HF_HUB_OFFLINE=1 TQDM_MININTERVAL=15 PYTHONUNBUFFERED=1 \
  TWOFOUR_PLAN_CACHE=1 TORCHINDUCTOR_CACHE_DIR=/root/ind
python benchmarks/gpu_engine.py --only benchmark --work /root/w --precision int8 --batch-sizes 16 64 256 --warmup 3 \
  --repeats 20 --benchmark-modes compiled --no-tutorial --out "$OUT/benchmark-compiled.json" > "$OUT/benchmark-compiled.log" 2>&1
tail -15 "$OUT/benchmark-compiled.log"
timeout 330 python benchmarks/engine_stream.py --work /root/w --requests 24 --passes 3 --batch-buckets 16 256 \
  --seq-buckets 192 384 --out "$OUT/stream.json" > "$OUT/stream.log" 2>&1
tail -15 "$OUT/stream.log"
