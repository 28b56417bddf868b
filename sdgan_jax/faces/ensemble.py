"""Several face detectors as one: the union of their detections after non-maximum suppression.

A face the detector misses is written out untouched, so the anonymizer's default is an
ensemble chosen by measured recall (``docs/detection.md``): MediaPipe's short-range and
full-range BlazeFace networks, each over its own tile pyramid (``faces.blazeface_detector``).
dlib's HOG and MMOD CNN detectors can join (``'hog'``, ``'cnn'``). Detections of different
detectors that overlap (IoU >= ``merge_iou``, or one box mostly inside the other) are one
face; the merged face keeps

* the box enclosing all its members' boxes (detectors place boxes differently, and the
  face must be inside whichever is right; a larger cover costs little),
* the six keypoints of its best-scoring BlazeFace member (they give the face's roll for
  alignment, ``faces.upright``), and
* the names of every detector that found it (``Detections.sources``), for the report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from sdgan_jax.faces import blazeface_detector, detect

DLIB_DETECTORS = ('hog', 'cnn')
DETECTORS = tuple(blazeface_detector.CONFIGS) + DLIB_DETECTORS
DEFAULT_DETECTORS = ('blazeface_short_range', 'blazeface_full_range')
# A box this much inside another one of at most MAX_AREA_RATIO its area is the same face.
CONTAINMENT = 0.6
MAX_AREA_RATIO = 4.0


def parse_detectors(spec: str | Sequence[str]) -> tuple[str, ...]:
  """'blazeface_short_range,hog' (or a sequence) -> validated detector names, in order."""
  names = [s.strip() for s in (spec.split(',') if isinstance(spec, str) else spec)]
  names = [n for n in names if n]
  unknown = sorted(set(names) - set(DETECTORS))
  if unknown or not names:
    raise ValueError(f'unknown detectors {unknown or names}; choose from {", ".join(DETECTORS)}')
  if len(set(names)) != len(names):
    raise ValueError(f'detector listed twice in {names}')
  return tuple(names)


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[len(a), len(b)] max(IoU, intersection / smaller area) of exclusive-end boxes."""
  iou = blazeface_detector.iou_matrix(a, b)
  w = np.clip(
    np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
  )
  h = np.clip(
    np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None
  )
  area = lambda c: (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])  # noqa: E731
  smaller = np.minimum(area(a)[:, None], area(b)[None, :])
  larger = np.maximum(area(a)[:, None], area(b)[None, :])
  contained = w * h / np.maximum(smaller, 1e-9)
  same = (contained >= CONTAINMENT) & (larger <= MAX_AREA_RATIO * smaller)
  return np.where(same, np.maximum(iou, contained), iou)


def merge(per_detector: dict[str, detect.Detections], merge_iou: float = 0.3) -> detect.Detections:
  """The union of several detectors' detections of one image (module doc)."""
  order = list(per_detector)
  rows = []  # (name, box inclusive, score, keypoints or None)
  for name, found in per_detector.items():
    for i in range(len(found)):
      kp = None if found.keypoints is None else found.keypoints[i]
      rows.append((name, found.boxes[i], float(found.scores[i]), kp))
  if not rows:
    return detect.Detections(
      np.zeros((0, 4), np.float32),
      np.zeros(0, np.float32),
      np.zeros((0, blazeface_detector.NUM_KEYPOINTS, 2), np.float32),
      (),
    )
  # BlazeFace rows first, best first; dlib's after (their scores are on other scales).
  rows.sort(key=lambda r: (r[3] is None, -r[2]))
  boxes = np.stack([r[1] for r in rows]).astype(np.float64)
  exclusive = boxes + np.array([0, 0, 1, 1])
  overlaps = _overlap(exclusive, exclusive)
  left = np.ones(len(rows), bool)
  out_boxes, out_scores, out_points, out_sources = [], [], [], []
  for i in range(len(rows)):
    if not left[i]:
      continue
    group = np.nonzero(left & (overlaps[i] >= merge_iou))[0]
    left[group] = False
    points = next((rows[j][3] for j in group if rows[j][3] is not None), None)
    members = boxes[group]
    out_boxes.append(np.concatenate([members[:, :2].min(0), members[:, 2:].max(0)]))
    out_scores.append(rows[i][2])
    out_points.append(
      np.full((blazeface_detector.NUM_KEYPOINTS, 2), np.nan, np.float32)
      if points is None
      else points
    )
    out_sources.append(tuple(sorted({rows[j][0] for j in group}, key=order.index)))
  return detect.Detections(
    np.asarray(out_boxes, np.float32),
    np.asarray(out_scores, np.float32),
    np.asarray(out_points, np.float32),
    tuple(out_sources),
  )


class EnsembleDetector:
  """``EnsembleDetector()(image) -> Detections``: the union of ``detectors`` (module doc).

  Args:
    detectors: names from ``DETECTORS`` (default ``DEFAULT_DETECTORS``).
    thresholds: per-detector score thresholds overriding the defaults (BlazeFace: the
      configs'; dlib: ``FaceDetector``'s ``threshold``).
    min_face_px: smallest face width the BlazeFace pyramids look for.
    upsample: dlib's upsampling for 'hog' and 'cnn'.
    merge_iou: overlap at which detections of different detectors are one face.
    batch_size: BlazeFace tiles per network call (default: 8 on CPU, 64 on accelerators).
    weights_dir: converted BlazeFace weights.
  """

  def __init__(
    self,
    detectors: Sequence[str] | str = DEFAULT_DETECTORS,
    thresholds: dict[str, float] | None = None,
    min_face_px: float = 20.0,
    upsample: int = 1,
    merge_iou: float = 0.3,
    batch_size: int | None = None,
    weights_dir: str | os.PathLike | None = None,
  ):
    self.names = parse_detectors(detectors)
    thresholds = dict(thresholds or {})
    unknown = sorted(set(thresholds) - set(self.names))
    if unknown:
      raise ValueError(f'thresholds given for detectors not in use: {unknown}')
    self.merge_iou = float(merge_iou)
    self.blazeface = {}
    self.dlib = {}
    for name in self.names:
      if name in DLIB_DETECTORS:
        self.dlib[name] = detect.FaceDetector(name, upsample, thresholds.get(name, 0.0))
      else:
        self.blazeface[name] = blazeface_detector.BlazeFaceDetector(
          name,
          threshold=thresholds.get(name),
          min_face_px=min_face_px,
          batch_size=batch_size,
          weights_dir=weights_dir,
        )

  @property
  def thresholds(self) -> dict[str, float]:
    return {
      **{n: d.threshold for n, d in self.blazeface.items()},
      **{n: d.threshold for n, d in self.dlib.items()},
    }

  def __call__(self, image) -> detect.Detections:
    return self.detect_many([image])[0]

  def detect_many(
    self, images: Sequence[np.ndarray], map_fn: Callable = lambda fn, items: list(map(fn, items))
  ) -> list[detect.Detections]:
    """Detections of several images: BlazeFace's tiles of all of them batched together,
    dlib's detectors per image through ``map_fn`` (e.g. a thread pool's map)."""
    images = [detect.check_image(im) for im in images]
    per_image: list[dict[str, detect.Detections]] = [{} for _ in images]
    for name, detector in self.blazeface.items():
      for found, results in zip(detector.detect_many(images), per_image):
        results[name] = found
    for name, detector in self.dlib.items():
      for found, results in zip(map_fn(detector, images), per_image):
        results[name] = found
    return [merge({n: r[n] for n in self.names}, self.merge_iou) for r in per_image]
