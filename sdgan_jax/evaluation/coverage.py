"""When a detection box covers a ground-truth face, and when a box is false (docs/detection.md).

A face the detector misses is written out untouched, so a detection counts when anonymizing
its box would hide the face: the face's visible key points (eye centres, nose tip, mouth
corners) lie inside the box, and the box is not absurdly larger than the face. The recall
set (``benchmarks/recall_set.py``) and the photo set (``evaluation.photo_set``) score alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# How much larger than the face's box a covering detection may be (area ratio).
MAX_AREA_RATIO = 12.0


def covers(box, face, tolerance: float = 0.05) -> bool:
  """True when ``box`` (x0, y0, x1, y1) contains the face's visible key points (with
  ``tolerance`` of the face width to spare) and is at most ``MAX_AREA_RATIO`` times the
  face's box. (What an occluder hides cannot identify anyone.)

  ``face`` is any object with ``size`` (its width), ``keypoints`` [5, 2], ``visible`` [5]
  and ``box`` (exclusive ends).
  """
  x0, y0, x1, y1 = (float(v) for v in box)
  slack = tolerance * face.size
  pts = face.keypoints[face.visible]
  inside = (
    (pts[:, 0] >= x0 - slack)
    & (pts[:, 0] <= x1 + slack)
    & (pts[:, 1] >= y0 - slack)
    & (pts[:, 1] <= y1 + slack)
  ).all()
  gx0, gy0, gx1, gy1 = face.box
  ratio = max(x1 - x0, 1e-6) * max(y1 - y0, 1e-6) / ((gx1 - gx0) * (gy1 - gy0))
  return bool(inside and ratio <= MAX_AREA_RATIO)


def _intersect(a, b) -> bool:
  return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def false_box_mask(boxes: np.ndarray, faces: Sequence, ignore: Sequence = ()) -> np.ndarray:
  """bool [N]: which of ``boxes`` [N, 4] cover none of ``faces`` and overlap none of their
  boxes nor any ``ignore`` region (x0, y0, x1, y1; a place where a detection counts neither
  way, e.g. a face cut by the frame)."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  mask = np.ones(len(boxes), bool)
  for i, b in enumerate(boxes):
    mask[i] = not (
      any(covers(b, face) or _intersect(b, face.box) for face in faces)
      or any(_intersect(b, region) for region in ignore)
    )
  return mask
