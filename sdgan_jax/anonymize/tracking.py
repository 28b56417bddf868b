"""Faces followed across video frames: a face keeps its target, a missed face stays covered.

``FaceTracker`` links each frame's detections to the tracks of the frames before (greedy
IoU). ``TrackCoverage`` holds frames back until it is known whether their tracks reappear,
and covers a tracked face where no detector found it (the ``tracked_not_detected`` reason).
"""

from __future__ import annotations

import numpy as np

from sdgan_jax.anonymize.fallback import cover
from sdgan_jax.anonymize.options import Options
from sdgan_jax.faces.pipeline import Face

# The reason of a face covered only because its track says it is there.
TRACKED_NOT_DETECTED = 'tracked_not_detected'


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[len(a), len(b)] IoU of (x0, y0, x1, y1) boxes in dlib's inclusive convention."""
  a = np.asarray(a, np.float64).reshape(-1, 4)
  b = np.asarray(b, np.float64).reshape(-1, 4)
  x0 = np.maximum(a[:, None, 0], b[None, :, 0])
  y0 = np.maximum(a[:, None, 1], b[None, :, 1])
  x1 = np.minimum(a[:, None, 2], b[None, :, 2])
  y1 = np.minimum(a[:, None, 3], b[None, :, 3])
  inter = np.clip(x1 - x0 + 1, 0, None) * np.clip(y1 - y0 + 1, 0, None)
  area = lambda c: (c[:, 2] - c[:, 0] + 1) * (c[:, 3] - c[:, 1] + 1)  # noqa: E731
  union = area(a)[:, None] + area(b)[None, :] - inter
  return inter / np.maximum(union, 1e-9)


class FaceTracker:
  """Greedy IoU tracking of detections from frame to frame (a face keeps its target).

  A detection continues the track whose last box overlaps it most (IoU >= ``min_iou``);
  tracks unseen for ``max_missed`` frames end.
  """

  def __init__(self, min_iou: float = 0.3, max_missed: int = 10):
    self.min_iou = min_iou
    self.max_missed = max_missed
    self._tracks: dict[int, tuple[np.ndarray, int]] = {}  # id -> (last box, frames missed)
    self._next = 0

  def assign(self, boxes: np.ndarray) -> list[int]:
    """The track id of each box of the next frame (new ids for new faces)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    ids = list(self._tracks)
    ious = (
      box_iou(boxes, np.stack([self._tracks[i][0] for i in ids]))
      if ids and len(boxes)
      else np.zeros((len(boxes), len(ids)))
    )
    assigned = [-1] * len(boxes)
    taken = set()
    for flat in np.argsort(-ious, axis=None):
      d, t = np.unravel_index(flat, ious.shape)
      if ious[d, t] < self.min_iou:
        break
      if assigned[d] == -1 and t not in taken:
        assigned[d] = ids[t]
        taken.add(t)
    for d, box in enumerate(boxes):
      if assigned[d] == -1:
        assigned[d] = self._next
        self._next += 1
      self._tracks[assigned[d]] = (box, 0)
    for t, track_id in enumerate(ids):
      if t not in taken:
        box, missed = self._tracks[track_id]
        if missed + 1 > self.max_missed:
          del self._tracks[track_id]
        else:
          self._tracks[track_id] = (box, missed + 1)
    return assigned


class TrackCoverage:
  """Covers a tracked face in the video frames where no detector found it (fail closed).

  Frames go in as they are anonymized (``add``) and come out ``frames`` later (``ready``),
  once it is known whether their tracks reappear: a track seen within ``frames`` frames
  before or after a frame, but not in it, is covered there by the fallback over its face
  region, interpolated between the neighbouring sightings (or the nearest one). A face that
  one frame's detectors miss thus never leaves the video as it was.
  """

  def __init__(self, frames: int, options: Options):
    self.frames = frames
    self.options = options
    self._pending: list[tuple[int, np.ndarray, list[Face]]] = []
    self._seen: dict[int, dict[int, np.ndarray]] = {}  # track -> frame -> face region
    self._next = 0
    self.covered = 0

  def add(self, image: np.ndarray, faces: list[Face], regions: list[np.ndarray]) -> None:
    """The next anonymized frame, its faces and the region each face covers."""
    index = self._next
    self._next += 1
    for face, region in zip(faces, regions):
      if face.track is not None:
        self._seen.setdefault(face.track, {})[index] = np.asarray(region, np.float64)
    self._pending.append((index, image, faces))

  def add_results(self, results: list[tuple[np.ndarray, list[Face]]]) -> None:
    """``add`` for each (frame, faces) of ``FaceAnonymizer.process``."""
    for image, faces in results:
      self.add(image, faces, [f.region or f.box for f in faces])

  def ready(self, final: bool = False) -> list[tuple[np.ndarray, list[Face]]]:
    """The frames whose neighbourhood is complete (all of them when ``final``), covered."""
    out = []
    while self._pending and (final or self._pending[0][0] + self.frames < self._next):
      index, image, faces = self._pending.pop(0)
      for track, frames in self._seen.items():
        region = self._missed_region(index, frames)
        if region is not None:
          image = cover(image, region, self.options)
          faces = faces + [
            Face(
              box=region,
              reason=TRACKED_NOT_DETECTED,
              track=track,
              detail='no detector found the tracked face in this frame',
            )
          ]
          self.covered += 1
      out.append((image, faces))
      for frames in self._seen.values():  # sightings older than the window are done with
        for old in [k for k in frames if k < index - self.frames]:
          del frames[old]
    return out

  def _missed_region(self, index: int, frames: dict[int, np.ndarray]) -> np.ndarray | None:
    if index in frames:
      return None
    before = [k for k in frames if index - self.frames <= k < index]
    after = [k for k in frames if index < k <= index + self.frames]
    if before and after:
      p, n = max(before), min(after)
      t = (index - p) / (n - p)
      return (1 - t) * frames[p] + t * frames[n]
    if before or after:
      return frames[max(before) if before else min(after)]
    return None
