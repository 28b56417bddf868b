#!/usr/bin/env bash
# The Beam pipeline (DirectRunner, 2 worker processes) against the CLI on the same photos,
# paired: the two commands alternate, ROUNDS times, each timed from start to exit (process
# start, model load and compilation included: the persistent compilation cache is warm
# after the first round). Photos: the demo's sample photos, COPIES times under other names.
#
#   bash benchmarks/beam_vs_cli.sh [PHOTOS_DIR] [WORKDIR] [COPIES] [ROUNDS]
set -euo pipefail
PHOTOS=${1:-outputs/demo/photos}
MODEL=${2:-workdirs/demo}
COPIES=${3:-8}
ROUNDS=${4:-3}
PY=${PY:-.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/in"
for k in $(seq 1 "$COPIES"); do
  for f in "$PHOTOS"/*.jpg; do cp "$f" "$WORK/in/${k}_$(basename "$f")"; done
done
N=$(ls "$WORK/in" | wc -l)
echo "photos: $N; model: $MODEL; $(nproc) cores"
for r in $(seq 1 "$ROUNDS"); do
  rm -rf "$WORK/cli" "$WORK/beam"
  t0=$(date +%s.%N)
  $PY tools/anonymize.py "$WORK/in" --output "$WORK/cli" --checkpoint "$MODEL" \
      --no_progress > "$WORK/cli.log" 2>&1
  t1=$(date +%s.%N)
  $PY tools/anonymize_beam.py "$WORK/in" --output "$WORK/beam" --checkpoint "$MODEL" \
      --workers 1 --direct_num_workers=2 --direct_running_mode=multi_processing \
      > "$WORK/beam.log" 2>&1
  t2=$(date +%s.%N)
  # The outputs must be the same bytes.
  same=$(cd "$WORK" && diff -rq -x anonymize_report.json -x '*.jsonl' -x .sdgan_beam cli beam \
         > /dev/null && echo identical || echo DIFFERENT)
  python3 - "$N" "$t0" "$t1" "$t2" "$same" "$WORK/cli/anonymize_report.json" <<'PYEOF'
import json, sys
n, t0, t1, t2, same, report = sys.argv[1:]
n, t0, t1, t2 = int(n), float(t0), float(t1), float(t2)
cli, beam = n / (t1 - t0), n / (t2 - t1)
inner = json.load(open(report))['totals']['images_per_s']
print(f'CLI {t1 - t0:.1f} s = {cli:.3f} images/s (its report, model load excluded: '
      f'{inner:.3f}); Beam {t2 - t1:.1f} s = {beam:.3f} images/s; Beam/CLI {beam / cli:.2f}x; '
      f'outputs {same}', flush=True)
PYEOF
done
