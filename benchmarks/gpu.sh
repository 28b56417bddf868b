#!/bin/bash
# The GPU measurement behind BENCHMARKS.md's GPU rows: one script for a lent GPU machine
# (JAX there, no TensorFlow), sized for one call of at most 10 minutes. ml-collections and
# dm-pix travel as wheels in .whl/ (see the device README); results are appended as JSON
# lines to $OUT/bench.jsonl, progress with timestamps goes to stderr.
# Order, most wanted first: the train step at the authors' shapes (never measured yet: its
# compile ran past 150 s on an H200 on 2026-11-26; the state is now initialised on the host
# CPU, which should save most of the 103 s its GPU compile took), then generator inference
# (10 s compile), then the default config's generator. Each phase has its own limit (T_*,
# seconds). The train step's and the bf16 generator's traces come back as $OUT/*.xplane.pb
# (TensorBoard / xprof); their per-kernel summaries are in the JSON rows.
OUT=${OUT:-/tmp/bench_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
B="python3 tools/benchmark.py --output $OUT/bench.jsonl"
keep_trace() {  # keep_trace DIR NAME [PATH_PATTERN]: the first trace under DIR -> $OUT/NAME
  local trace
  trace=$(find "$1" -path "*${3:-}*" -name '*.xplane.pb' -size -16M 2>/dev/null | head -1)
  if [ -n "$trace" ]; then cp "$trace" "$OUT/$2"; fi
}
# --profile_dir: 3 more steps traced, with a per-kernel summary in the JSON row (busy time
# over span says whether the device waits for launches; the top kernels say where time goes).
timeout ${T_TRAIN:-330} $B --preset authors --dtypes bfloat16 --bench train \
    --profile_dir /tmp/profile --sweep_train_batches 128
keep_trace /tmp/profile train_step.xplane.pb
timeout ${T_GEN:-130} $B --preset authors --dtypes bfloat16,float32 --bench generator,anonymize \
    --profile_dir /tmp/profile_gen --sweep_gen_batches 1024,4096
keep_trace /tmp/profile_gen generator.xplane.pb bfloat16
timeout ${T_DEFAULT:-60} $B --preset default --dtypes bfloat16 --bench generator
echo done
