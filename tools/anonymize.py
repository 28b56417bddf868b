"""Anonymize every face in photos and videos (paper §3: crop, de-identify, paste back).

  python tools/anonymize.py INPUT... --output DIR --checkpoint WORKDIR
  python tools/anonymize.py photos/ clip.mp4 --output anon/ --checkpoint workdirs/demo
  python tools/anonymize.py photos/ --output anon/ --baseline pixelate   # no model needed

INPUT: image files (JPEG, PNG, WebP, GIF, TIFF; every frame of an animated GIF, APNG or
WebP and every page of a TIFF, timing and loop kept), folders (recursive; the tree is
mirrored under DIR; hidden files, other types and dangling links are reported) and videos
(mp4, mov, m4v, mkv, avi, webm; audio kept where the container takes it).
WORKDIR is a training workdir (`python run.py ... --workdir=WORKDIR`; `make demo` makes
workdirs/demo). A model trained on a face parser's semantic maps (`prepare_data.py
--parser`; WORKDIR/semantic_maps.json names the parser) gets that parser's maps of the
aligned faces (EAGRNet, paper §3.2); --parser PARSER_WORKDIR gives its workdir when it has
moved (the weights must be the recorded ones). The report's "semantic_maps" says which
maps were used.

Detection: by default two BlazeFace networks (MediaPipe's short- and full-range models,
converted by `make weights`) over tile pyramids that find faces from ~20 px to the whole
frame, tilted or turned; their detections are merged and the report says which detector
found each face. A face no detector finds cannot be covered: lower --detect_min_face_px
or a --detector_threshold for crowds of tiny faces.

Fail closed: a detected face that cannot be anonymized -- too small, landmarks failed, the
mask misses it, the generator failed, or its output still matches the source person under
the dlib ResNet descriptor (distance below --identity_threshold) -- is covered by the
fallback (coarse pixelation or a solid fill) and reported. --no_identity_check turns
that last check off (the report and the console warn). Inputs are never overwritten, nor
are existing outputs unless --overwrite is given, and no two outputs (nor the report) share
a path: all checked, with the folders' writability, before the work starts. Outputs are
written atomically, upright (EXIF orientation applied) and without EXIF, GPS or XMP
metadata; temporary files a killed run left are removed by the next run. Unreadable files
are reported and the run goes on. The JSON report (DIR/anonymize_report.json) lists per
file the faces found, anonymized, covered, errors, notes on conversions and time; Ctrl-C
stops the run and writes the report of the files finished. Exit status: 0 when every file
was processed, 1 when some failed (or the report could not be written), 2 on bad
arguments, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from sdgan_jax import anonymize, compile_cache  # noqa: E402
from sdgan_jax.faces import ensemble  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('inputs', nargs='+', metavar='INPUT', help='images, folders, videos')
  parser.add_argument('--output', '-o', required=True, metavar='DIR',
                      help='output folder (must not be an input folder or inside one)')
  parser.add_argument('--checkpoint', metavar='WORKDIR',
                      help='training workdir with config.json and checkpoints/ (make demo: '
                      'workdirs/demo)')
  parser.add_argument('--step', type=int, help='checkpoint step (default: the latest)')
  parser.add_argument('--parser', metavar='PARSER_WORKDIR',
                      help='the face parser (EAGRNet workdir) of a model trained on parser '
                      'maps, if not where WORKDIR/semantic_maps.json says (same weights)')
  parser.add_argument('--baseline', choices=sorted(anonymize.BASELINES),
                      help='run a classic method instead of the generator, on the same '
                      'detection path: blur (Gaussian 17x17), pixelate (8x8 blocks), mask '
                      '(solid fill); needs no checkpoint')
  parser.add_argument('--target', choices=anonymize.TARGET_MODES, default='seeded',
                      help='target identity from the identity bank: seeded (the same for a '
                      'file, face and --seed), random, or farthest from the source face')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--fallback', choices=anonymize.FALLBACKS, default='pixelate',
                      help='cover for faces that cannot be anonymized')
  parser.add_argument('--fallback_blocks', type=int, default=8,
                      help='pixelation blocks across the fallback region')
  parser.add_argument('--identity_threshold', type=float,
                      default=anonymize.DEFAULT_IDENTITY_THRESHOLD,
                      help='an output face whose dlib ResNet descriptor is closer than this to '
                      "the source face's gets the fallback (dlib's same-person convention: "
                      '0.6; higher is stricter; must be > 0: turn the check off with '
                      '--no_identity_check)')
  parser.add_argument('--no_identity_check', action='store_true',
                      help='do not re-check the output faces against the source person '
                      '(faster, needs no dlib ResNet weights; the report warns)')
  parser.add_argument('--min_face_px', type=float, default=anonymize.Options.min_face_px,
                      help='faces with a smaller detection box get the fallback')
  parser.add_argument('--detectors', default=','.join(ensemble.DEFAULT_DETECTORS),
                      help='face detectors, comma-separated, whose detections are merged: '
                      f'{", ".join(ensemble.DETECTORS)} (default: both BlazeFace networks, '
                      'chosen by measured recall; hog/cnn are dlib\'s)')
  parser.add_argument('--detector_threshold', action='append', default=[], metavar='NAME=SCORE',
                      help='score threshold of one detector, e.g. blazeface_short_range=0.5 '
                      '(lower finds more faces and more false ones); repeatable')
  parser.add_argument('--detect_min_face_px', type=float,
                      default=anonymize.Options.detect_min_face_px,
                      help='smallest face width (px) the BlazeFace detectors look for; '
                      'smaller is slower')
  parser.add_argument('--track_cover_frames', type=int,
                      default=anonymize.Options.track_cover_frames,
                      help='videos: a tracked face no detector finds in a frame is covered '
                      'there when it was seen within this many frames before or after '
                      '(0: off)')
  parser.add_argument('--upsample', type=int, default=1,
                      help="dlib detectors' upsampling: each step finds 2x smaller faces, "
                      '~4x slower')
  parser.add_argument('--batch_size', type=int,
                      help='faces per generator call (default: 8 on CPU, 64 on accelerators)')
  parser.add_argument('--images_per_batch', type=int, default=anonymize.IMAGES_PER_BATCH,
                      help='photos detected in parallel and whose faces are generated together')
  parser.add_argument('--frames_per_batch', type=int, default=anonymize.FRAMES_PER_BATCH,
                      help='video frames whose faces are generated together')
  parser.add_argument('--workers', type=int, default=0,
                      help='threads detecting and pasting back the faces of different photos '
                      'or frames at once '
                      f'(default 0: one per CPU core, at most {anonymize.MAX_AUTO_WORKERS})')
  parser.add_argument('--weights_dir', help='converted weights (default: $SDGAN_WEIGHTS_DIR or '
                      '~/.cache/sdgan_jax/weights; `make weights` fills it)')
  parser.add_argument('--keep_exif', action='store_true',
                      help='copy EXIF (camera, date) to the outputs; GPS and the orientation '
                      'tag are still removed, XMP is never copied')
  parser.add_argument('--quality', type=int, default=95, help='JPEG/WebP quality')
  parser.add_argument('--visualize', action='store_true',
                      help='also write NAME.detections.png: the output with each detection '
                      'drawn (green: anonymized, red: fallback and why); photos only')
  parser.add_argument('--report', help=f'JSON report path (default: DIR/{anonymize.REPORT_NAME}); '
                      'never an input or an output of the run')
  parser.add_argument('--overwrite', action='store_true',
                      help='replace outputs (and the report) that already exist; without it '
                      'the run refuses to start')
  parser.add_argument('--no_progress', action='store_true')
  compile_cache.add_argument(parser)
  args = parser.parse_args(argv)
  if args.baseline and args.checkpoint:
    parser.error('give --checkpoint or --baseline, not both')
  if args.parser and args.baseline:
    parser.error('--parser is for models trained on parser maps; the baselines use no '
                 'semantic maps')
  if args.workers < 0:
    parser.error('--workers must be >= 0 (0: one per CPU core)')
  threshold = args.identity_threshold
  if args.no_identity_check:
    if threshold != anonymize.DEFAULT_IDENTITY_THRESHOLD:
      parser.error('give --identity_threshold or --no_identity_check, not both')
    threshold = 0.0
  elif not threshold > 0:  # 0, negative or NaN: never a silent way to turn the check off
    parser.error(f'--identity_threshold must be > 0 (dlib\'s same-person distance is 0.6), got '
                 f'{args.identity_threshold:g}; use --no_identity_check to turn the check off')
  try:
    args.detectors = ensemble.parse_detectors(args.detectors)
    args.detector_thresholds = _thresholds(args.detector_threshold, args.detectors)
    args.options = anonymize.Options(
        target=args.target, seed=args.seed, fallback=args.fallback,
        fallback_blocks=args.fallback_blocks, identity_threshold=threshold,
        min_face_px=args.min_face_px, detectors=args.detectors,
        detector_thresholds=args.detector_thresholds,
        detect_min_face_px=args.detect_min_face_px, upsample=args.upsample,
        track_cover_frames=args.track_cover_frames,
        keep_exif=args.keep_exif, quality=args.quality, workers=args.workers,
        parser_workdir=args.parser, batch_size=args.batch_size,
        images_per_batch=args.images_per_batch, frames_per_batch=args.frames_per_batch)
  except ValueError as e:
    parser.error(_as_flag(str(e)))
  return args


def _as_flag(message: str) -> str:
  """An ``Options`` error ('quality must be ...') in the CLI's words ('--quality must ...')."""
  name = message.split(' ', 1)[0]
  if name.isidentifier() and f'--{name}' in _FLAGS:
    return f'--{message}'.replace('identity_threshold=0', '--no_identity_check')
  return message


_FLAGS = ('--target', '--fallback', '--fallback_blocks', '--identity_threshold',
          '--min_face_px', '--detect_min_face_px', '--track_cover_frames', '--upsample',
          '--quality', '--workers', '--batch_size', '--images_per_batch', '--frames_per_batch')


def _thresholds(items, detectors) -> dict[str, float]:
  out = {}
  for item in items:
    name, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'--detector_threshold takes NAME=SCORE, got {item!r}')
    if name not in detectors:
      raise ValueError(f'--detector_threshold {name}: not one of --detectors {",".join(detectors)}')
    try:
      out[name] = float(value)
    except ValueError:
      raise ValueError(f'--detector_threshold {item!r}: {value!r} is not a number') from None
  return out


def main(argv=None) -> int:
  args = parse_args(argv)
  compile_cache.enable(args.compilation_cache)
  if not args.options.identity_check:
    print(f'warning: {anonymize.IDENTITY_CHECK_OFF}', file=sys.stderr)
  try:
    # Check the paths (outputs, report, writability) before the (slow) model load.
    anonymize.plan_jobs(args.inputs, args.output, visualize=args.visualize,
                        overwrite=args.overwrite, report_path=args.report)
    anonymizer = anonymize.build_anonymizer(
        args.checkpoint, baseline=args.baseline, options=args.options,
        weights_dir=args.weights_dir, step=args.step)
    report = anonymize.anonymize_paths(
        args.inputs, args.output, anonymizer, report_path=args.report,
        visualize=args.visualize, progress=not args.no_progress, overwrite=args.overwrite,
        images_per_batch=args.options.images_per_batch,
        frames_per_batch=args.options.frames_per_batch)
  except anonymize.Interrupted as e:
    done = sum(f['status'] != 'skipped' for f in e.report['files'])
    where = e.report_error or f"report: {e.report['report']}"
    left = len(e.report.get('unfinished', []))
    print(f"interrupted: {done} file{'s' * (done != 1)} finished, {left} not started or not "
          f'finished (run again with --overwrite to redo them all); {where}', file=sys.stderr)
    return 130
  except KeyboardInterrupt:
    print('interrupted before any file was processed: nothing was written', file=sys.stderr)
    return 130
  except anonymize.ReportWriteError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  except (anonymize.InputError, FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  totals = report['totals']
  print(f"{totals['files']} files: {totals['faces_found']} faces found, "
        f"{totals['anonymized']} anonymized, {totals['fallbacks']} covered by the fallback; "
        f"{totals['errors']} errors, {totals['skipped']} skipped; "
        f"{totals['images_per_s']:.2f} images/s, {totals['faces_per_s']:.2f} faces/s")
  for entry in report['files']:
    if entry['status'] != 'ok':
      print(f"  {entry['status']}: {entry['input']}: {entry.get('error', '')}", file=sys.stderr)
  print(f"report: {report['report']}")
  return 1 if totals['errors'] else 0


if __name__ == '__main__':
  sys.exit(main())
