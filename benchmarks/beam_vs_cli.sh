#!/usr/bin/env bash
# The Beam pipeline (DirectRunner, 2 worker processes) against the CLI on the same photos,
# paired: the two commands alternate, each timed from start to exit (process start, model
# load and compilation included; the persistent compilation cache is warm after the first
# run). Each round runs both on SMALL and on LARGE copies of the photos: the difference
# between the two sizes gives the throughput without the fixed start-up cost.
#
#   bash benchmarks/beam_vs_cli.sh [PHOTOS_DIR] [WORKDIR] [SMALL] [LARGE] [ROUNDS]
set -euo pipefail
PHOTOS=${1:-outputs/demo/photos}
MODEL=${2:-workdirs/demo}
SMALL=${3:-4}    # copies of the photos
LARGE=${4:-12}
ROUNDS=${5:-2}
PY=${PY:-.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for copies in "$SMALL" "$LARGE"; do
  mkdir -p "$WORK/in$copies"
  for k in $(seq 1 "$copies"); do
    for f in "$PHOTOS"/*.jpg; do cp "$f" "$WORK/in$copies/${k}_$(basename "$f")"; done
  done
done
echo "$(ls "$WORK/in$SMALL" | wc -l) and $(ls "$WORK/in$LARGE" | wc -l) photos; model $MODEL; $(nproc) cores"
seconds() { local t0; t0=$(date +%s.%N); "$@" > "$WORK/log" 2>&1 || { cat "$WORK/log"; exit 1; }; echo "$(date +%s.%N) - $t0" | bc; }
for r in $(seq 1 "$ROUNDS"); do
  line="round $r:"
  for copies in "$SMALL" "$LARGE"; do
    rm -rf "$WORK/cli" "$WORK/beam"
    cli=$(seconds $PY tools/anonymize.py "$WORK/in$copies" --output "$WORK/cli" \
          --checkpoint "$MODEL" --no_progress)
    # The outputs must be the same bytes (exit status 0: no file failed).
    beam=$(seconds $PY tools/anonymize_beam.py "$WORK/in$copies" --output "$WORK/beam" \
           --checkpoint "$MODEL" --workers 1 --direct_num_workers=2 \
           --direct_running_mode=multi_processing)
    same=$(diff -rq -x anonymize_report.json -x '*.jsonl' -x .sdgan_beam \
           -x .sdgan-anonymize.lock "$WORK/cli" "$WORK/beam" > /dev/null && echo same || echo DIFFERENT)
    line="$line $((copies * $(ls "$PHOTOS"/*.jpg | wc -l))) photos: CLI ${cli}s Beam ${beam}s ($same);"
  done
  echo "$line"
done
