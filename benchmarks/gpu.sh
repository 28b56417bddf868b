#!/bin/bash
# The GPU measurement behind BENCHMARKS.md's GPU rows: one script for a lent GPU machine
# (JAX there, no TensorFlow). ml-collections and dm-pix travel as wheels in .whl/ (see the
# device README); results are appended as JSON lines to $OUT/bench.jsonl, progress with
# timestamps goes to stderr.
# Order: generator inference first (10 s compile on an H200), then the train step, whose
# state init alone took 103 s to compile there on 2026-11-26 and whose step compile ran
# past the 150 s left in that call: give it several minutes (T_TRAIN).
OUT=${OUT:-/tmp/bench_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
B="python3 tools/benchmark.py --output $OUT/bench.jsonl"
timeout ${T_GEN:-200} $B --preset authors --dtypes bfloat16,float32 --bench generator,anonymize \
    --sweep_gen_batches 1024,4096
timeout ${T_TRAIN:-900} $B --preset authors --dtypes bfloat16,float32 --bench train \
    --sweep_train_batches 128,512
timeout ${T_DEFAULT:-600} $B --preset default --dtypes bfloat16 --bench train,generator
echo done
