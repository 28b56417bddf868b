"""The second stage: every detector candidate judged by the face mesh (docs/detection.md).

The detector ensemble favours recall, and pays for it with boxes on hands, watches, suits,
flags and car seats, each of which would get a generated face. Here every candidate is fitted
with MediaPipe's face mesh (``faces.mesh``: cropped upright by BlazeFace's eye keypoints,
1.5 times its box, fitted a second time in the region of its first mesh) and judged:

* ``presence >= threshold`` (``decided_by='mesh'``): a face. For a candidate narrower than
  ``SMALL_PX`` the presence is the lower of two fits, on the crop and on its mirror image,
  and the threshold is MediaPipe's 0.5: at that size the mesh sees few pixels and scores a
  button or a fold as surely as a face, but a face still looks like a face in a mirror
  while what the mesh imagined in a pattern mostly does not. Where the mesh is sure of it
  (``mesh.PRESENCE_THRESHOLD``, MediaPipe's 0.5) its box becomes the tight box of the 468
  points, so a loose detection (a box twice the face) no longer widens the cover, and the
  face is aligned and masked from its own points (``faces.landmarks.from_mesh``); a doubtful
  mesh leaves the detectors' box, and the face is covered by the fallback.
* below, but ``SMALL_PX`` or wider and found by at least ``AGREEMENT_DETECTORS`` detectors
  each scoring at least ``AGREEMENT_SCORE`` (``decided_by='agreement'``): two networks sure
  of a face outvote the mesh, which scores masked, over-exposed or heavily compressed faces
  low. Kept with the detectors' box, without a mesh (the fallback covers it unless a mesh
  fit succeeds later). Under ``SMALL_PX`` two networks agree on jacket buttons too.
* a candidate narrower than ``min_judge_px`` (``decided_by='unjudged'``): the mesh would
  see a few pixels blown up to 192. Kept as the detector gave it; under the anonymizer's
  ``min_face_px`` it is covered by the fallback anyway.
* anything else: not a face. Dropped, and listed in ``Detections.rejected`` with its scores
  for the report.

A kept candidate of ``SMALL_PX`` and more with BlazeFace's keypoints is fitted once more in
the region its keypoints place (``keypoint_refits``, ``mesh.keypoint_roi``), and keeps that
fit where the mesh is sure of it and surer than of the box's: an ensemble's box that
encloses a larger detection of the face leaves the face in a corner of the box's crop.

The thresholds were chosen on the recall set (seed 0) and the photo set's tuning split and
checked on held-out images; the mirror check for small candidates was chosen on the tuning
data alone and then checked once on the photo set's fresh split (docs/detection.md, "The
second stage"). Two candidates of one face (a box on an eye and a box on the whole face)
give nearly the same mesh; after tightening they are merged (IoU >= ``MERGE_IOU``), and a
kept box whose mesh is not sure of it that lies mostly inside a sure face's box
(``CONTAINED``) joins that face, keeping the best and the names of all detectors that found
it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from sdgan_jax.faces import blazeface_detector, detect, upright
from sdgan_jax.faces import mesh as face_mesh

# Real faces that the mesh doubted scored 0.3-0.5 (a masked face, an over-exposed one);
# false candidates above 8 px mostly scored under 0.1.
PRESENCE_THRESHOLD = 0.3
# Candidates narrower than this are kept unjudged: under it the mesh scored real and false
# alike; a face that small cannot be generated anyway (the fallback covers it).
MIN_JUDGE_PX = 8.0
# Candidates narrower than this (the size from which the anonymizer's goal is a generated
# face) are judged by the lower presence of the crop and its mirror image against
# MediaPipe's threshold, and the detectors' agreement does not keep them: on the tuning
# data false candidates of 17-37 px scored 0.72-1.0 on the crop but 0.01-0.65 on its
# mirror, two networks agreed at 0.77-0.79 on jacket buttons, while every real face of
# 24 px and more scored 0.65 and more on both.
SMALL_PX = 40.0
AGREEMENT_DETECTORS = 2
AGREEMENT_SCORE = 0.75
MERGE_IOU = 0.5
# A kept candidate this much inside the box of a face the mesh is sure of is part of that
# face (a box on its eye), not a face of its own: covered with it, not pixelated on top.
CONTAINED = 0.6
DECIDERS = ('mesh', 'agreement', 'unjudged')


def _candidate_size(box) -> float:
  return float(min(box[2] - box[0], box[3] - box[1]) + 1)


def _inside(boxes: np.ndarray) -> np.ndarray:
  """[N, N]: the share of box j's area inside box i, at [j, i] (exclusive-end boxes)."""
  w = np.clip(
    np.minimum(boxes[:, None, 2], boxes[None, :, 2])
    - np.maximum(boxes[:, None, 0], boxes[None, :, 0]),
    0,
    None,
  )
  h = np.clip(
    np.minimum(boxes[:, None, 3], boxes[None, :, 3])
    - np.maximum(boxes[:, None, 1], boxes[None, :, 1]),
    0,
    None,
  )
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  return w * h / np.maximum(area[:, None], 1e-9)


def _rows(
  found: detect.Detections, rows: np.ndarray, boxes: np.ndarray, **fields
) -> detect.Detections:
  """The candidates ``rows`` of ``found`` with ``boxes`` and the per-row ``fields``."""
  return detect.Detections(
    boxes[rows],
    found.scores[rows],
    None if found.keypoints is None else found.keypoints[rows],
    tuple(found.sources[i] for i in rows) if found.sources else found.sources,
    **fields,
  )


def needs_mirror(
  found: detect.Detections, fits: Sequence[face_mesh.MeshFit], min_judge_px: float = MIN_JUDGE_PX
) -> list[int]:
  """The candidates whose mirror image ``judge`` needs: judged, narrower than
  ``SMALL_PX``, and scored a face (MediaPipe's threshold) on the crop."""
  return [
    k
    for k, (box, fit) in enumerate(zip(found.boxes, fits))
    if min_judge_px <= _candidate_size(box) < SMALL_PX
    and fit.presence >= face_mesh.PRESENCE_THRESHOLD
  ]


def mirrored(
  image: np.ndarray, found: detect.Detections, rows: Sequence[int]
) -> tuple[np.ndarray, detect.Detections]:
  """(``image`` mirrored left-right, the candidates ``rows`` mirrored with it): boxes
  flipped, BlazeFace's keypoints flipped and their right and left swapped."""
  rows = np.asarray(rows, np.int64)
  right = image.shape[1] - 1  # inclusive boxes and pixel centres: x -> right - x
  boxes = np.asarray(found.boxes, np.float32)[rows].reshape(-1, 4).copy()
  boxes[:, [0, 2]] = right - boxes[:, [2, 0]]
  keypoints = None
  if found.keypoints is not None:
    keypoints = np.asarray(found.keypoints, np.float32)[rows].copy()
    keypoints[..., 0] = right - keypoints[..., 0]
    swap = [
      blazeface_detector.LEFT_EYE,
      blazeface_detector.RIGHT_EYE,
      blazeface_detector.NOSE_TIP,
      blazeface_detector.MOUTH,
      blazeface_detector.LEFT_EAR,
      blazeface_detector.RIGHT_EAR,
    ]
    keypoints = keypoints[:, swap]
  flipped = np.ascontiguousarray(np.asarray(image)[:, ::-1])
  return flipped, detect.Detections(boxes, np.asarray(found.scores)[rows], keypoints)


def _decisions(
  found: detect.Detections, presence: np.ndarray, threshold: float, min_judge_px: float
) -> list[str | None]:
  """Per candidate, who keeps it (``DECIDERS``) or None (rejected): the module doc's rules."""
  decided = []
  for k, box in enumerate(found.boxes):
    agree = (
      found.sources is not None
      and len(found.sources[k]) >= AGREEMENT_DETECTORS
      and float(found.scores[k]) >= AGREEMENT_SCORE
    )
    size = _candidate_size(box)
    small = size < SMALL_PX
    bar = max(threshold, face_mesh.PRESENCE_THRESHOLD) if small else threshold
    decided.append(
      'unjudged'
      if size < min_judge_px
      else 'mesh'
      if presence[k] >= bar
      else 'agreement'
      if agree and not small
      else None
    )
  return decided


def needs_keypoint_crop(
  found: detect.Detections,
  fits: Sequence[face_mesh.MeshFit],
  threshold: float = PRESENCE_THRESHOLD,
  min_judge_px: float = MIN_JUDGE_PX,
) -> list[int]:
  """The candidates ``keypoint_refits`` fits again: kept (by the mesh or by the detectors'
  agreement), ``SMALL_PX`` or wider, with BlazeFace's keypoints."""
  presence = np.array([f.presence for f in fits], np.float32).reshape(-1)
  decided = _decisions(found, presence, threshold, min_judge_px)
  return [
    k
    for k, d in enumerate(decided)
    if d in ('mesh', 'agreement')
    and _candidate_size(found.boxes[k]) >= SMALL_PX
    and found.keypoints is not None
    and upright.has_keypoints(found.keypoints[k])
  ]


def keypoint_refits(
  mesh: face_mesh.FaceMesh,
  images: Sequence[np.ndarray],
  found: Sequence[detect.Detections],
  fits: Sequence[Sequence[face_mesh.MeshFit]],
  threshold: float = PRESENCE_THRESHOLD,
  min_judge_px: float = MIN_JUDGE_PX,
  map_fn: Callable = lambda fn, items: list(map(fn, items)),
) -> list[list[face_mesh.MeshFit]]:
  """``fits`` with the candidates of ``needs_keypoint_crop`` fitted again in the region their
  keypoints place (``mesh.keypoint_roi``), keeping the fit the mesh is surer of.

  An ensemble's box that encloses a larger detection of the same face leaves the face in a
  corner of MediaPipe's crop of the box, where the mesh may see no face at all (the face
  goes to the fallback) or fit one 1.45-1.8 times too wide (a sure but loose mesh that its
  second fit does not correct). The new fit replaces the old only where the mesh is sure of
  it (MediaPipe's threshold) and surer than of the old, so a verdict can only go from
  doubtful to sure: nothing rejected is let in, nothing kept is lost."""
  rows = [needs_keypoint_crop(f, m, threshold, min_judge_px) for f, m in zip(found, fits)]
  out = [list(m) for m in fits]
  which = [i for i, r in enumerate(rows) if r]
  if not which:
    return out
  refits = mesh.fit_many(
    [images[i] for i in which],
    [[(found[i].boxes[k], found[i].keypoints[k]) for k in rows[i]] for i in which],
    map_fn=map_fn,
    crop='keypoints',
  )
  for i, image_fits in zip(which, refits):
    for k, fit in zip(rows[i], image_fits):
      if fit.presence >= face_mesh.PRESENCE_THRESHOLD and fit.presence > out[i][k].presence:
        out[i][k] = fit
  return out


def judge(
  found: detect.Detections,
  fits: Sequence[face_mesh.MeshFit],
  threshold: float = PRESENCE_THRESHOLD,
  min_judge_px: float = MIN_JUDGE_PX,
  mirror: dict[int, float] | None = None,
) -> detect.Detections:
  """The candidates of one image that the mesh keeps (module doc), best first.

  Args:
    found: the detector's candidates.
    fits: a mesh fit per candidate, in the same order.
    threshold: the presence score from which a candidate is a face.
    min_judge_px: candidates whose box is narrower are kept unjudged.
    mirror: candidate index -> presence of the mesh on the mirror image, for the
      candidates of ``needs_mirror`` (``VerifiedDetector`` fits them). Without it a small
      candidate is judged on its crop alone (against MediaPipe's threshold).

  Returns:
    ``Detections`` with ``presence`` (NaN where unjudged; the lower of crop and mirror
    where both were fitted), ``decided_by`` (``DECIDERS``) and ``meshes`` (None but where
    the mesh decided) per face, tightened boxes, and ``rejected``: the dropped candidates
    with their presence.
  """
  if len(fits) != len(found):
    raise ValueError(f'{len(fits)} mesh fits for {len(found)} candidates')
  presence = np.array([f.presence for f in fits], np.float32).reshape(-1)
  for k, p in (mirror or {}).items():
    presence[k] = min(presence[k], p)
  decided = _decisions(found, presence, threshold, min_judge_px)
  by_mesh = np.array([d == 'mesh' for d in decided], bool)
  # Boxes come from meshes sure of their face; a doubtful one keeps the detectors' box.
  sure = by_mesh & (presence >= face_mesh.PRESENCE_THRESHOLD)
  boxes = np.array(
    [fit.box() if m else b for b, m, fit in zip(found.boxes, sure, fits)], np.float32
  ).reshape(-1, 4)
  # Mesh-judged faces by presence, then the others by detector score; the first of a group
  # of tightened boxes on one face absorbs the rest.
  faces = sorted(
    (k for k, d in enumerate(decided) if d),
    key=lambda k: (not by_mesh[k], -presence[k] if by_mesh[k] else -found.scores[k]),
  )
  exclusive = boxes.astype(np.float64) + np.array([0, 0, 1, 1])
  overlap = blazeface_detector.iou_matrix(exclusive, exclusive)
  inside = _inside(exclusive)
  taken = np.zeros(len(found), bool)
  kept, sources = [], []
  for i in faces:
    if taken[i]:
      continue
    group = [
      j
      for j in faces
      if not taken[j]
      and (
        j == i or sure[i] and (overlap[i, j] >= MERGE_IOU if sure[j] else inside[j, i] >= CONTAINED)
      )
    ]
    taken[group] = True
    kept.append(i)
    if found.sources:
      sources.append(tuple(dict.fromkeys(n for j in group for n in found.sources[j])))
  kept = np.asarray(kept, np.int64)
  dropped = np.asarray([k for k, d in enumerate(decided) if d is None], np.int64)
  rejected = _rows(found, dropped, found.boxes, presence=presence[dropped])
  verified = _rows(
    found,
    kept,
    boxes,
    presence=np.array(
      [np.nan if decided[k] == 'unjudged' else presence[k] for k in kept], np.float32
    ).reshape(-1),
    decided_by=tuple(decided[k] for k in kept),
    meshes=tuple(fits[k] if by_mesh[k] else None for k in kept),
    rejected=rejected,
  )
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

  def __init__(
    self,
    detector,
    mesh: face_mesh.FaceMesh,
    threshold: float = PRESENCE_THRESHOLD,
    min_judge_px: float = MIN_JUDGE_PX,
  ):
    if not 0.0 <= threshold <= 1.0 or threshold != threshold:
      raise ValueError(f'the presence threshold is a probability in [0, 1], got {threshold}')
    self.detector = detector
    self.mesh = mesh
    self.threshold = float(threshold)
    self.min_judge_px = float(min_judge_px)

  def __call__(self, image) -> detect.Detections:
    return self.detect_many([image])[0]

  def detect_many(
    self, images: Sequence[np.ndarray], map_fn: Callable = lambda fn, items: list(map(fn, items))
  ) -> list[detect.Detections]:
    """Detections of several images, every image's candidates fitted in shared batches."""
    found = self.detector.detect_many(images, map_fn=map_fn)
    fits = self.mesh.fit_many(images, found, map_fn=map_fn)
    fits = keypoint_refits(
      self.mesh, images, found, fits, self.threshold, self.min_judge_px, map_fn
    )
    mirrors = mirror_presence(self.mesh, images, found, fits, self.min_judge_px, map_fn)
    return [
      judge(f, m, self.threshold, self.min_judge_px, r) for f, m, r in zip(found, fits, mirrors)
    ]


def mirror_presence(
  mesh: face_mesh.FaceMesh,
  images: Sequence[np.ndarray],
  found: Sequence[detect.Detections],
  fits: Sequence[Sequence[face_mesh.MeshFit]],
  min_judge_px: float = MIN_JUDGE_PX,
  map_fn: Callable = lambda fn, items: list(map(fn, items)),
) -> list[dict[int, float]]:
  """Per image, candidate index -> the mesh's presence on the mirror image, for the
  candidates of ``needs_mirror`` (a few per photo: one more batch of fits, not a pass)."""
  rows = [needs_mirror(f, m, min_judge_px) for f, m in zip(found, fits)]
  which = [i for i, r in enumerate(rows) if r]
  if not which:
    return [{} for _ in images]
  flipped = [mirrored(images[i], found[i], rows[i]) for i in which]
  refits = mesh.fit_many([f[0] for f in flipped], [f[1] for f in flipped], map_fn=map_fn)
  out = [{} for _ in images]
  for i, image_fits in zip(which, refits):
    out[i] = {k: fit.presence for k, fit in zip(rows[i], image_fits)}
  return out
