"""The second stage: every detector candidate judged by the face mesh (docs/detection.md).

The detector ensemble favours recall, and pays for it with boxes on hands, watches, suits,
flags and car seats, each of which would get a generated face. Here every candidate is fitted
with MediaPipe's face mesh (``faces.mesh``: cropped upright by BlazeFace's eye keypoints,
1.5 times its box) and the mesh's face-presence score decides:

* ``presence >= threshold``: a face (``decided_by='mesh'``). Its box becomes the tight box of
  the 468 points, so a loose detection (a box twice the face) no longer widens the cover, and
  its mesh is kept: the face is aligned and masked from its own points (``faces.landmarks``'
  ``from_mesh``).
* ``presence < threshold``: not a face; dropped, and listed in ``Detections.rejected`` with
  its scores for the report.
* a candidate narrower than ``min_judge_px`` cannot be judged (the mesh would see a few
  pixels blown up to 192): it is kept as the detector gave it (``decided_by='detector'``).
  Below the anonymizer's ``min_face_px`` such a face is covered by the fallback anyway.

Two candidates of one face (a box on an eye and a box on the whole face) give nearly the same
mesh; after tightening they are merged (IoU >= ``MERGE_IOU``), keeping the higher presence and
the names of all detectors that found it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from sdgan_jax.faces import blazeface, detect, mesh as face_mesh

PRESENCE_THRESHOLD = face_mesh.PRESENCE_THRESHOLD
# Real faces gave 0.67-1.0 at boxes of 15-17 px on the recall set; below 12 px nothing is
# left for the mesh to see.
MIN_JUDGE_PX = 12.0
MERGE_IOU = 0.5
DECIDERS = ('mesh', 'detector')


def _candidate_size(box) -> float:
  return float(min(box[2] - box[0], box[3] - box[1]) + 1)


def _rows(found: detect.Detections, rows: np.ndarray, boxes: np.ndarray, **fields
          ) -> detect.Detections:
  """The candidates ``rows`` of ``found`` with ``boxes`` and the per-row ``fields``."""
  return detect.Detections(
      boxes[rows], found.scores[rows],
      None if found.keypoints is None else found.keypoints[rows],
      tuple(found.sources[i] for i in rows) if found.sources else found.sources, **fields)


def judge(found: detect.Detections, fits: Sequence[face_mesh.MeshFit],
          threshold: float = PRESENCE_THRESHOLD, min_judge_px: float = MIN_JUDGE_PX
          ) -> detect.Detections:
  """The candidates of one image that the mesh keeps (module doc), best first.

  Args:
    found: the detector's candidates.
    fits: a mesh fit per candidate, in the same order.
    threshold: the presence score from which a candidate is a face.
    min_judge_px: candidates whose box is narrower are kept unjudged.

  Returns:
    ``Detections`` with ``presence`` (NaN where unjudged), ``decided_by`` and ``meshes`` per
    face, tightened boxes, and ``rejected``: the dropped candidates with their presence.
  """
  if len(fits) != len(found):
    raise ValueError(f'{len(fits)} mesh fits for {len(found)} candidates')
  presence = np.array([f.presence for f in fits], np.float32).reshape(-1)
  small = np.array([_candidate_size(b) < min_judge_px for b in found.boxes], bool)
  boxes = np.array([b if s else fit.box() for b, s, fit in zip(found.boxes, small, fits)],
                   np.float32).reshape(-1, 4)
  # Judged faces by presence, then the unjudged ones; the first of a group absorbs the rest.
  faces = [i for i in np.argsort(-np.where(small, -1.0, presence), kind='stable')
           if small[i] or presence[i] >= threshold]
  overlap = blazeface.iou_matrix(boxes + np.array([0, 0, 1, 1]), boxes + np.array([0, 0, 1, 1]))
  taken = np.zeros(len(found), bool)
  kept, sources = [], []
  for i in faces:
    if taken[i]:
      continue
    group = [j for j in faces if not taken[j] and (
        j == i or (not small[i] and not small[j] and overlap[i, j] >= MERGE_IOU))]
    taken[group] = True
    kept.append(i)
    if found.sources:
      sources.append(tuple(dict.fromkeys(n for j in group for n in found.sources[j])))
  kept = np.asarray(kept, np.int64)
  dropped = np.asarray([i for i in range(len(found)) if not small[i] and
                        presence[i] < threshold], np.int64)
  rejected = _rows(found, dropped, found.boxes, presence=presence[dropped])
  verified = _rows(found, kept, boxes, presence=np.where(small[kept], np.nan, presence[kept]),
                   decided_by=tuple('detector' if small[i] else 'mesh' for i in kept),
                   meshes=tuple(fits[i] for i in kept), rejected=rejected)
  return dataclasses.replace(verified, sources=tuple(sources)) if found.sources else verified


class VerifiedDetector:
  """A detector whose candidates the face mesh judges (module doc).

  ``VerifiedDetector(ensemble.EnsembleDetector(), FaceMesh.load())(image) -> Detections``.

  Args:
    detector: anything with ``detect_many(images, map_fn) -> [detect.Detections]``.
    mesh: a ``faces.mesh.FaceMesh``.
    threshold: the presence score from which a candidate is a face.
    min_judge_px: candidates narrower than this are kept unjudged.
  """

  def __init__(self, detector, mesh: face_mesh.FaceMesh,
               threshold: float = PRESENCE_THRESHOLD, min_judge_px: float = MIN_JUDGE_PX):
    if not 0.0 <= threshold <= 1.0 or threshold != threshold:
      raise ValueError(f'the presence threshold is a probability in [0, 1], got {threshold}')
    self.detector = detector
    self.mesh = mesh
    self.threshold = float(threshold)
    self.min_judge_px = float(min_judge_px)

  def __call__(self, image) -> detect.Detections:
    return self.detect_many([image])[0]

  def detect_many(self, images: Sequence[np.ndarray],
                  map_fn: Callable = lambda fn, items: list(map(fn, items))
                  ) -> list[detect.Detections]:
    """Detections of several images, every image's candidates fitted in shared batches."""
    found = self.detector.detect_many(images, map_fn=map_fn)
    fits = self.mesh.fit_many(images, found, map_fn=map_fn)
    return [judge(f, m, self.threshold, self.min_judge_px) for f, m in zip(found, fits)]
