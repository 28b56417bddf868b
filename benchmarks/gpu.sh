#!/bin/bash
# The GPU measurement behind BENCHMARKS.md's GPU rows: one script for a lent GPU machine
# (JAX there, no TensorFlow), sized for one call of at most 10 minutes. ml-collections and
# dm-pix travel as wheels in .whl/ (see the device README); results are appended as JSON
# lines to $OUT/bench.jsonl, progress with timestamps goes to stderr.
# Phases, most wanted first, each under its own limit (T_*, seconds) and all together under
# T_TOTAL; a phase with under 30 s left is skipped:
#  1. the train step at the authors' shapes, bf16, batch 32, profiled. XLA's compile timers
#     go to $OUT/train_compile.log: its HLO passes (autotuning included) and its backend.
#     Compiled without a GPU (tools/benchmark.py --compile_for h200) the same program took
#     ~12 s and ~32 s in them on a 2-core CPU, so the rest of a GPU's compile is autotuning.
#  2. generator inference, bf16 and fp32, batch 256, then larger batches, profiled.
#  3. the train step in fp32, batch 32.
#  4. a warm start: phase 1's step again in a new process, from the compilation cache.
#  5. larger train batches (bf16): XLA's buffer assignment for an H200 puts batch 256 at
#     44 GB and 512 at 87.9 GB, under the ~105 GB (75%) that JAX takes by default.
#  6. the default config's generator.
# The traces of phases 1 and 2 come back as $OUT/*.xplane.pb (TensorBoard / xprof); their
# per-kernel summaries are in the JSON rows. A rerun on the still-warm machine finds the
# compiled programs in the cache ($JAX_COMPILATION_CACHE_DIR; the rows name it).
OUT=${OUT:-/tmp/bench_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/sdgan_jax_cache}
END=$((SECONDS + ${T_TOTAL:-560}))
date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
B="python3 tools/benchmark.py --output $OUT/bench.jsonl"
phase() {  # phase NAME LIMIT COMMAND...: COMMAND under LIMIT seconds or the time left
  local name=$1 limit=$2 left=$((END - SECONDS)); shift 2
  if [ "$left" -lt 30 ]; then echo "phase $name skipped: ${left} s left" >&2; return; fi
  if [ "$limit" -gt "$left" ]; then limit=$left; fi
  echo "phase $name (at most $limit s)" >&2
  timeout "$limit" "$@"
}
keep_trace() {  # keep_trace DIR NAME [PATH_PATTERN]: the first trace under DIR -> $OUT/NAME
  local trace
  trace=$(find "$1" -path "*${3:-}*" -name '*.xplane.pb' -size -16M 2>/dev/null | head -1)
  if [ -n "$trace" ]; then cp "$trace" "$OUT/$2"; fi
}
# --profile_dir: 3 more steps traced, with a per-kernel summary in the JSON row (busy time
# over span says whether the device waits for launches; the top kernels say where time goes).
# XLA's log lines go to the file only; the flag dump (gpu_compiler.cc:593) nowhere.
TF_CPP_MIN_LOG_LEVEL=0 TF_CPP_VMODULE=gpu_compiler=1 phase train "${T_TRAIN:-240}" \
    $B --preset authors --dtypes bfloat16 --bench train --profile_dir /tmp/profile \
    2> >(grep -v 'gpu_compiler.cc:593\]' | tee "$OUT/train_compile.log" \
         | grep -v '^[IWE][0-9]\{4\} ' >&2)
keep_trace /tmp/profile train_step.xplane.pb
phase generator "${T_GEN:-130}" $B --preset authors --dtypes bfloat16,float32 \
    --bench generator,anonymize --profile_dir /tmp/profile_gen --sweep_gen_batches 1024,4096
keep_trace /tmp/profile_gen generator.xplane.pb bfloat16
phase train_fp32 "${T_TRAIN32:-150}" $B --preset authors --dtypes float32 --bench train
phase warm_start "${T_WARM:-60}" $B --preset authors --dtypes bfloat16 --bench train --steps 3
phase train_sweep "${T_SWEEP:-200}" $B --preset authors --dtypes bfloat16 --bench train \
    --train_batch 256 --sweep_train_batches 512 --steps 3
phase default "${T_DEFAULT:-60}" $B --preset default --dtypes bfloat16 --bench generator
grep -h 'time:' "$OUT/train_compile.log" 2>/dev/null | sed 's/^.*\] //' | cut -c1-120
echo done
