"""The run's JSON report: one entry per file, the totals, and the detections drawn.

Per file: the faces found, anonymized and covered by the fallback (with reasons, one
``pipeline.Face.to_json`` row per face), errors and seconds; for the run: the method, which
semantic maps the model got, the options, warnings and totals (README.md, "Anonymizing
photos and videos").
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sdgan_jax import cpu_export, media
from sdgan_jax.anonymize.tracking import TRACKED_NOT_DETECTED
from sdgan_jax.faces.pipeline import Face

if TYPE_CHECKING:
  from sdgan_jax.anonymize.jobs import Job
  from sdgan_jax.faces import detect

IDENTITY_CHECK_OFF = (
  'the identity re-check is off (--no_identity_check / identity_threshold '
  '0): output faces were not checked against the source person, so a '
  'face the generator left recognizable is not covered by the fallback'
)


def face_counts(faces: Sequence[Face]) -> dict:
  """Counts of detected faces (the frames where tracking alone covered a face are
  counted apart, as ``covered_by_tracking``)."""
  faces = [f for f in faces if f.reason != TRACKED_NOT_DETECTED]
  reasons: dict[str, int] = {}
  for f in faces:
    if f.status != 'anonymized':
      reasons[f.reason] = reasons.get(f.reason, 0) + 1
  return {
    'faces_found': len(faces),
    'anonymized': sum(f.status == 'anonymized' for f in faces),
    'fallbacks': sum(f.status != 'anonymized' for f in faces),
    'fallback_reasons': reasons,
  }


def file_entry(
  job: Job,
  kind: str,
  *,
  faces: Sequence[Face] | None = None,
  error: str | None = None,
  seconds: float | None = None,
  **extra,
) -> dict:
  """One file's report entry: 'ok' or 'error', its face counts (photos: and faces)."""
  entry: dict[str, Any] = {'input': job.key(), 'kind': kind, 'status': 'error' if error else 'ok'}
  if error:
    entry['error'] = error
  if faces is not None:
    entry.update(face_counts(faces))
    if kind == 'image':
      entry['faces'] = [f.to_json() for f in faces]
  if seconds is not None:
    entry['seconds'] = round(seconds, 3)
  entry.update(extra)
  return entry


def track_counts(faces: Sequence[Face], covered_by_tracking: int) -> dict:
  """A video's (or animation's) tracks and the frames where only tracking covered a face."""
  return {'tracks': len({f.track for f in faces}), 'covered_by_tracking': covered_by_tracking}


def file_totals(files: Sequence[dict]) -> dict:
  """The counts of ``run_report``'s totals over ``files``; they add up over any split of
  the files (a Beam run sums them over its workers). ``images``: the photos written."""
  totals = {
    'files': len(files),
    'errors': sum(f['status'] == 'error' for f in files),
    'skipped': sum(f['status'] == 'skipped' for f in files),
  }
  for key in (
    'faces_found',
    'anonymized',
    'fallbacks',
    'frames',
    'covered_by_tracking',
    'rejected_candidates',
  ):
    totals[key] = sum(f.get(key, 0) for f in files)
  totals['no_face_found'] = sum(f['status'] == 'ok' and not f.get('faces_found') for f in files)
  totals['images'] = sum(f.get('kind') == 'image' and f['status'] == 'ok' for f in files)
  return totals


def finish_totals(counts: dict, seconds: float) -> dict:
  """The report's totals from ``file_totals``' counts: with the run's seconds and rates."""
  totals = dict(counts)
  images = totals.pop('images')
  totals['seconds'] = round(seconds, 3)
  totals['images_per_s'] = round((images + totals['frames']) / max(seconds, 1e-9), 4)
  totals['faces_per_s'] = round(totals['faces_found'] / max(seconds, 1e-9), 4)
  return totals


def run_report(
  files: list[dict],
  *,
  anonymizer,
  warnings: Sequence[str],
  seconds: float,
  interrupted: list[str] | None = None,
) -> dict:
  """The whole run's report: totals over ``files``, the method, options and warnings."""
  totals = finish_totals(file_totals(files), seconds)
  # A photo with no face at all is written as it came in: listed, so that a user can check
  # that it holds none (a detector's miss cannot be covered).
  no_face = [f['input'] for f in files if f['status'] == 'ok' and not f.get('faces_found')]
  warnings = list(warnings)
  if not anonymizer.options.identity_check:
    warnings.insert(0, IDENTITY_CHECK_OFF)
  report = {
    'tool': 'sdgan_jax.anonymize',
    'method': anonymizer.method,
    'semantic_maps': anonymizer.semantic_maps,
    'created': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
    'options': dataclasses.asdict(anonymizer.options),
    'cpu_inference': cpu_export.describe(),
    'warnings': warnings,
    'totals': totals,
    'no_face_found': no_face,
    'files': files,
  }
  if interrupted is not None:
    report['interrupted'] = True
    report['unfinished'] = interrupted
  return report


def write_report(report: dict, path: str | os.PathLike, replace: bool = True) -> pathlib.Path:
  """Writes the run's JSON report atomically (over an existing file only with ``replace``)."""
  path = pathlib.Path(path)
  with media.atomic_path(path, replace=replace) as tmp:
    tmp.write_text(json.dumps(report, indent=1) + '\n')
  return path


def draw_detections(image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
  """The (anonymized) image with each box drawn: green anonymized, red fallback."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel

  canvas = Image.fromarray(image)
  draw = ImageDraw.Draw(canvas)
  width = max(2, min(image.shape[:2]) // 200)
  for face in faces:
    colour = (40, 220, 60) if face.status == 'anonymized' else (230, 30, 30)
    x0, y0, x1, y1 = (float(v) for v in face.box)
    draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
    label = 'ok' if face.status == 'anonymized' else face.reason
    draw.text((x0 + 2, max(0, y0 - 12)), label, fill=colour)
  return np.asarray(canvas)


def rejected_rows(found: detect.Detections) -> list[dict]:
  """Report rows of the candidates that the second stage judged not to be faces."""
  rejected = found.rejected
  if rejected is None:
    return []
  return [
    {
      'box': [round(float(v), 1) for v in rejected.boxes[k]],
      'score': round(float(rejected.scores[k]), 4),
      'presence': round(float(rejected.presence[k]), 4),
      'detectors': list(rejected.sources[k]) if rejected.sources else None,
    }
    for k in range(len(rejected))
  ]
