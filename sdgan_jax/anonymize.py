"""Anonymizing photos and videos: every detected face replaced, or else covered (paper §3).

The paper's procedure for full images (§3, §3.4): crop each face, de-identify the crop with
the generator conditioned on the face's semantic map and another person's identity, paste
it back. Per image (``FaceAnonymizer.process``):

1. detect every face with the detector ensemble (``faces.ensemble``: by default both
   BlazeFace networks over tile pyramids, batched over the images at hand), fit 68
   landmarks (tilted faces turned upright first with the detector's keypoints,
   ``faces.upright``), align a crop at the model's resolution, draw its face mask and
   semantic map (``sdgan_jax.faces``); the images at hand in parallel threads
   (``Options.workers``), as in step 4. A model trained on a face parser's maps (its
   workdir's ``semantic_maps.json``, ``sdgan_jax.semantic_source``) gets that parser's
   maps instead (EAGRNet, paper §3.2): the parser runs on the aligned crops of all faces
   at hand in one batched call; the face mask stays the landmark mask;
2. draw a target identity from the model's identity bank: 'random', 'seeded' (the same for
   the same file, face and seed) or 'farthest' (the bank identity whose mean descriptor is
   farthest from the source face's); a face tracked across video frames keeps its target;
3. generate all faces of the images at hand in fixed-size batches (one compiled program);
4. paste each generated face back inside its mask with a feathered edge.

Fail closed. A face is *anonymized* only if every step worked and a check passed; any
other detected face gets the *fallback* (coarse pixelation of, or a solid fill over, its
face region -- the detection box grown to the face box its keypoints place,
``faces.upright.face_region`` -- enlarged by ``fallback_margin``) and the reason is
reported:

* ``too_small``: the box is under ``min_face_px``;
* ``landmarks_failed``: the shape predictor's points are implausible for the box, or the
  crop cannot be aligned;
* ``mask_misses_face``: the warped face mask does not cover the centre of the box;
* ``parsing_error``: the face parser raised (models trained on parser maps);
* ``generation_error``: the generator raised or returned non-finite values
  (``paste_error``: pasting it back raised);
* ``still_matches_source``: the output face, seen by the identity backbone (dlib's ResNet
  descriptor on dlib's 150-px face chip, DESIGN §5), is within ``identity_threshold`` of
  the source face (dlib's same-person convention: distance < 0.6);
* ``unchanged``: last line of defence: the box's pixels came out identical to the input
  (a solid fill is applied);
* ``tracked_not_detected`` (videos): no detector found a face its track had within
  ``track_cover_frames`` frames before or after (``TrackCoverage``).

Without a checkpoint the classic methods of the paper's tables run on the same path
(``baseline``: 'blur' = Gaussian 17x17, 'pixelate' = 8x8 blocks, 'mask' = solid fill, on
the aligned crop inside the mask), with the same checks and fallback.

Files (``anonymize_paths``): images (JPEG, PNG, WebP, GIF, TIFF; every frame of an
animation or page of a TIFF, through the video path), folders (recursive; the tree is
mirrored under the output folder) and videos; see ``sdgan_jax.media`` for decoding, EXIF
orientation, metadata stripping and atomic writes. Before any work, ``plan_jobs`` refuses an
output (or the report) on an input, on another output or on an existing file (unless
``overwrite``), and unwritable folders. An unreadable file, a dangling symbolic link or a
video shorter than it declares is reported and the run goes on; hidden and other files are
listed as skipped; a photo whose processing raises is reported (not written) and the rest
of its batch is redone one photo at a time. Ctrl-C stops the run (``Interrupted``) after
writing the report of the files finished.
The run's JSON report lists, per file, the faces found, anonymized and covered by the
fallback (with reasons), errors and time, and which semantic maps the model got
(``semantic_maps``: 'polygons' or the parser's fingerprint; null for the baselines).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import functools
import hashlib
import json
import os
import pathlib
import time
import traceback
from typing import Any, Iterable, Sequence

import numpy as np

from sdgan_jax import media, semantic_source
from sdgan_jax.faces import align, detect, ensemble, paste, pipeline, upright

TARGET_MODES = ('random', 'seeded', 'farthest')
FALLBACKS = ('pixelate', 'fill')
# --baseline name -> sdgan_jax.baselines name (the paper's table rows).
BASELINES = {'blur': 'blur17', 'pixelate': 'pixelate8', 'mask': 'mask'}
# Crop size for --baseline without a checkpoint: the paper's quantitative resolution.
BASELINE_RESOLUTION = 64
CHIP_SIZE = 150          # dlib's face chip for its descriptor
CHIP_PADDING = 0.25
REPORT_NAME = 'anonymize_report.json'
DEFAULT_IDENTITY_THRESHOLD = 0.6  # dlib's same-person distance
# Threads when Options.workers is 0: dlib's landmarks, alignment, paste-back (and dlib's HOG
# detector when it is in the ensemble) run outside the GIL, one dlib detector per thread.
MAX_AUTO_WORKERS = 8
# Photos (video frames) processed together: prepared in parallel threads, generated in shared
# batches. Eight keep MAX_AUTO_WORKERS threads busy.
IMAGES_PER_BATCH = 8
FRAMES_PER_BATCH = 8


class InputError(ValueError):
  """Bad command-line inputs (overlapping input and output, nothing to do...)."""


class ReportWriteError(OSError):
  """The run's work is done but its report could not be written (``.report`` holds it)."""

  def __init__(self, message: str, report: dict):
    super().__init__(message)
    self.report = report


class Interrupted(KeyboardInterrupt):
  """Ctrl-C during a run: the report of the files finished so far (``.report``) was
  written (``.report_error`` says why not, if it could not be)."""

  def __init__(self, report: dict, report_error: str | None = None):
    super().__init__('interrupted')
    self.report = report
    self.report_error = report_error


@dataclasses.dataclass
class Options:
  """How faces are anonymized (see the module doc for the fail-closed rules).

  Attributes:
    target: 'random', 'seeded' or 'farthest' target identities.
    seed: seed of 'seeded' targets.
    fallback: 'pixelate' or 'fill' for faces that cannot be anonymized.
    fallback_blocks: pixelation blocks across the fallback region.
    fallback_margin: the detection box is enlarged by this fraction on each side.
    identity_threshold: output faces closer than this to the source (dlib descriptor
      distance) are covered by the fallback; 0 turns the check off (the report then warns;
      the CLI also has --no_identity_check); negative values are refused.
    min_face_px: faces whose box is smaller are covered by the fallback (>= 0).
    min_mask_coverage: share of the box's central half the face mask must cover.
    detectors: the ensemble's detectors (``faces.ensemble.DETECTORS``), merged after NMS.
    detector_thresholds: per-detector score thresholds overriding the defaults.
    detect_min_face_px: the smallest face width the BlazeFace pyramids look for (faces
      below ``min_face_px`` are still covered by the fallback when found).
    upsample: dlib's upsampling, for 'hog' and 'cnn' in ``detectors``.
    feather: soft paste-back edge, as a fraction of the face box size.
    keep_exif: copy EXIF (minus GPS and orientation) into the outputs.
    quality: JPEG/WebP quality of the outputs (1-100).
    workers: threads preparing (detection, landmarks, alignment) and pasting back the faces
      of different images (or frames) at once; 0: one per CPU core, at most
      ``MAX_AUTO_WORKERS``. Results do not depend on it.
    track_cover_frames: in videos, a tracked face that no detector finds in a frame is
      covered by the fallback there when the track was seen within this many frames before
      or after (its box interpolated); 0 turns it off.
    parser_workdir: the face parser of a model trained on parser maps, instead of the one
      its workdir's record names (which must have the same weights; ``semantic_source``).
    batch_size: faces per generator (and identity backbone) call; None: 8 on CPU, 64 on
      accelerators (``build_anonymizer``).
    images_per_batch: photos prepared together and generated in shared batches (``Runner``).
    frames_per_batch: video (and animation) frames generated together.
  """

  target: str = 'seeded'
  seed: int = 0
  fallback: str = 'pixelate'
  fallback_blocks: int = 8
  fallback_margin: float = 0.25
  identity_threshold: float = DEFAULT_IDENTITY_THRESHOLD
  min_face_px: float = pipeline.DEFAULT_MIN_FACE_PX
  min_mask_coverage: float = 0.9
  detectors: tuple[str, ...] = ensemble.DEFAULT_DETECTORS
  detector_thresholds: dict[str, float] = dataclasses.field(default_factory=dict)
  detect_min_face_px: float = 20.0
  upsample: int = 1
  feather: float = 0.06
  keep_exif: bool = False
  quality: int = 95
  workers: int = 0
  track_cover_frames: int = 5
  parser_workdir: str | None = None
  batch_size: int | None = None
  images_per_batch: int = IMAGES_PER_BATCH
  frames_per_batch: int = FRAMES_PER_BATCH

  def __post_init__(self):
    if self.target not in TARGET_MODES:
      raise ValueError(f'target must be one of {TARGET_MODES}, got {self.target!r}')
    if self.fallback not in FALLBACKS:
      raise ValueError(f'fallback must be one of {FALLBACKS}, got {self.fallback!r}')
    if self.fallback_blocks < 1:
      raise ValueError(f'fallback_blocks must be >= 1, got {self.fallback_blocks}')
    if self.workers < 0:
      raise ValueError(f'workers must be >= 0 (0: one per CPU core), got {self.workers}')
    self.detectors = ensemble.parse_detectors(self.detectors)
    if self.track_cover_frames < 0:
      raise ValueError(f'track_cover_frames must be >= 0, got {self.track_cover_frames}')
    if self.detect_min_face_px <= 0:
      raise ValueError(f'detect_min_face_px must be > 0, got {self.detect_min_face_px}')
    if not (self.identity_threshold >= 0):  # also refuses NaN
      raise ValueError(f'identity_threshold must be > 0 (dlib\'s same-person distance is 0.6), '
                       f'got {self.identity_threshold:g}; to run without the identity check, '
                       'turn it off explicitly (--no_identity_check, identity_threshold=0)')
    if not (self.min_face_px >= 0):
      raise ValueError(f'min_face_px must be >= 0, got {self.min_face_px:g}')
    if isinstance(self.quality, bool) or not 1 <= self.quality <= 100:
      raise ValueError(f'quality must be between 1 and 100, got {self.quality}')
    for name in ('batch_size', 'images_per_batch', 'frames_per_batch'):
      value = getattr(self, name)
      if not (value is None and name == 'batch_size') and (value is None or value < 1):
        raise ValueError(f'{name} must be >= 1, got {value}')

  @property
  def identity_check(self) -> bool:
    """The output faces are checked against the source person (threshold > 0)."""
    return self.identity_threshold > 0

  def resolved_workers(self) -> int:
    """``workers``, with 0 resolved to this machine's CPU cores (at most MAX_AUTO_WORKERS)."""
    return self.workers or min(os.cpu_count() or 1, MAX_AUTO_WORKERS)


@dataclasses.dataclass
class FaceResult:
  """What happened to one detected face (one row of the report)."""

  box: list[float]
  status: str = 'anonymized'            # or 'fallback'
  reason: str | None = None
  detail: str | None = None
  identity_distance: float | None = None
  target: int | None = None
  track: int | None = None
  detectors: list[str] | None = None   # which detectors found the face
  region: list[float] | None = None     # the face region a fallback covers (x0 y0 x1 y1)

  def to_json(self) -> dict:
    return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass
class _Face:
  """A face on its way through ``process``."""

  box: np.ndarray
  keypoints: np.ndarray | None = None  # the detector's six keypoints, if it has them
  detectors: tuple[str, ...] = ()
  landmarks: np.ndarray | None = None
  crop: np.ndarray | None = None      # uint8 [R, R, 3]
  mask: np.ndarray | None = None      # uint8 [R, R, 1] 0/255
  semantic: np.ndarray | None = None  # uint8 [R, R, 1]
  matrix: np.ndarray | None = None
  output: np.ndarray | None = None    # float [R, R, 3] in [0, 1]
  reason: str | None = None
  detail: str | None = None
  distance: float | None = None
  target: int | None = None
  track: int | None = None
  index: int = 0                      # detection order in its image
  source_image: np.ndarray | None = None

  def fail(self, reason: str, detail: str | None = None):
    if self.reason is None:
      self.reason, self.detail = reason, detail


# --- identity backbone ------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _jitted_dlib_apply():
  """One jitted descriptor per process: every anonymizer reuses its compiled programs."""
  import jax  # pylint: disable=import-outside-toplevel

  from sdgan_jax.models.dlib_resnet import DlibResNet  # pylint: disable=import-outside-toplevel

  return jax.jit(DlibResNet().apply)


class IdentityBackbone:
  """dlib's ResNet descriptor (JAX port) on dlib's aligned face chips, in padded batches."""

  def __init__(self, weights_dir: str | os.PathLike | None = None, batch_size: int = 8,
               variables=None):
    from sdgan_jax import weights  # pylint: disable=import-outside-toplevel

    self._variables = variables or weights.load_weights('dlib_resnet', weights_dir)
    self._apply = _jitted_dlib_apply()
    self.batch_size = batch_size

  @staticmethod
  def chip(image: np.ndarray, box, landmarks) -> np.ndarray:
    """dlib's 150x150 aligned chip (``get_face_chip``, padding 0.25) of a face's landmarks."""
    dlib = detect._import_dlib()  # pylint: disable=protected-access
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    points = dlib.points([dlib.point(int(round(float(x))), int(round(float(y))))
                          for x, y in landmarks])
    shape = dlib.full_object_detection(dlib.rectangle(x0, y0, x1, y1), points)
    return np.asarray(dlib.get_face_chip(np.ascontiguousarray(image), shape, size=CHIP_SIZE,
                                         padding=CHIP_PADDING))

  def descriptors(self, chips: Sequence[np.ndarray]) -> np.ndarray:
    """float32 [N, 128] descriptors of uint8 [150, 150, 3] chips."""
    if not len(chips):
      return np.zeros((0, 128), np.float32)
    chips = np.stack(chips).astype(np.float32) / 255.0
    out = []
    b = self.batch_size
    for lo in range(0, len(chips), b):
      chunk = chips[lo:lo + b]
      valid = len(chunk)
      if valid < b:  # pad to one compiled batch size
        chunk = np.concatenate([chunk, np.zeros((b - valid,) + chunk.shape[1:], chunk.dtype)])
      out.append(np.asarray(self._apply(self._variables, chunk))[:valid])
    return np.concatenate(out).astype(np.float32)


# --- video face tracks --------------------------------------------------------------------


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
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    ids = list(self._tracks)
    ious = box_iou(boxes, np.stack([self._tracks[i][0] for i in ids])) if ids and len(
        boxes) else np.zeros((len(boxes), len(ids)))
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
    self._pending: list[tuple[int, np.ndarray, list[FaceResult]]] = []
    self._seen: dict[int, dict[int, np.ndarray]] = {}  # track -> frame -> face region
    self._next = 0
    self.covered = 0

  def add(self, image: np.ndarray, faces: list[FaceResult],
          regions: list[np.ndarray]) -> None:
    index = self._next
    self._next += 1
    for face, region in zip(faces, regions):
      if face.track is not None:
        self._seen.setdefault(face.track, {})[index] = np.asarray(region, np.float64)
    self._pending.append((index, image, faces))

  def ready(self, final: bool = False) -> list[tuple[np.ndarray, list[FaceResult]]]:
    """The frames whose neighbourhood is complete (all of them when ``final``), covered."""
    out = []
    while self._pending and (final or self._pending[0][0] + self.frames < self._next):
      index, image, faces = self._pending.pop(0)
      for track, frames in self._seen.items():
        region = self._missed_region(index, frames)
        if region is not None:
          image = cover(image, region, self.options)
          faces = faces + [FaceResult(box=[float(v) for v in region], status='fallback',
                                      reason='tracked_not_detected', track=track,
                                      detail='no detector found the tracked face in this frame')]
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


# --- the face anonymizer ----------------------------------------------------------------


def _stable_int(text: str) -> int:
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], 'little')


class FaceAnonymizer:
  """Detect, align, generate (or baseline), paste back, check, fall back (module doc).

  Args:
    generator: a ``sdgan_jax.inference.TrainedGenerator`` (with its identity bank), or
      None with ``baseline``.
    baseline: 'blur', 'pixelate' or 'mask' instead of the generator.
    options: ``Options``.
    identity: an ``IdentityBackbone``; needed for the identity check (threshold > 0)
      and 'farthest' targets.
    resolution: crop size for baselines without a generator.
    detector: an object with ``detect_many(images, map_fn) -> [detect.Detections]``
      (default: ``faces.ensemble.EnsembleDetector`` of the options' detectors).
    weights_dir: where the detectors' converted weights are.
    parser: the face parser (``train_parser.TrainedParser``) of a generator trained on
      parser maps; None: the one its record names, or ``options.parser_workdir``'s
      (``semantic_source.parser_for`` checks it is the recorded one).

  Attributes:
    semantic_maps: what the generator gets: 'polygons' or the parser's fingerprint (None
      for baselines).
  """

  def __init__(self, generator=None, baseline: str | None = None,
               options: Options | None = None, identity: IdentityBackbone | None = None,
               resolution: int | None = None, detector=None,
               weights_dir: str | os.PathLike | None = None, parser=None):
    if (generator is None) == (baseline is None):
      raise ValueError('give exactly one of a trained generator and a baseline')
    if baseline is not None and baseline not in BASELINES:
      raise ValueError(f'unknown baseline {baseline!r}; choose from {sorted(BASELINES)}')
    self.options = options or Options()
    self.generator = generator
    self.baseline = baseline
    if generator is not None and generator.bank is None:
      raise ValueError('the generator has no identity bank to draw target identities from')
    needs_identity = self.options.identity_threshold > 0 or (
        generator is not None and self.options.target == 'farthest')
    if needs_identity and identity is None:
      raise ValueError('the identity check and farthest targets need the identity backbone '
                       '(IdentityBackbone()); set identity_threshold=0 to run without it')
    self.identity = identity
    self.resolution = int(generator.resolution if generator is not None else
                          resolution or BASELINE_RESOLUTION)
    self.parser, self.semantic_maps = None, None
    given = parser if parser is not None else self.options.parser_workdir
    if generator is None:
      if given:
        raise semantic_source.SemanticMapsError(
            'a face parser was given, but the baselines use no semantic maps: leave out '
            '--parser')
    else:
      record = getattr(generator, 'semantic_maps', None) or semantic_source.SemanticSource()
      model = f'the model {getattr(generator, "workdir", None) or "(generator)"}'
      self.parser = semantic_source.parser_for(record, given, model=model,
                                               batch_size=generator.batch_size)
      self.semantic_maps = record.label
    self.detector = detector or ensemble.EnsembleDetector(
        self.options.detectors, self.options.detector_thresholds,
        min_face_px=self.options.detect_min_face_px, upsample=self.options.upsample,
        weights_dir=weights_dir)
    self.predictor = detect.LandmarkPredictor()
    self._random = np.random.default_rng()
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None
    self._track_targets: dict[tuple[str, int], int] = {}
    self.faces_processed = 0
    self.timings: dict[str, float] = {}  # seconds per stage of ``process``, summed

  @property
  def method(self) -> str:
    return f'baseline:{self.baseline}' if self.baseline else 'sdgan'

  # -- per-face preparation

  def _map(self, fn, *iterables) -> list:
    """``list(map(fn, *iterables))``, items in parallel threads (``Options.workers``): the
    per-image work of dlib, numpy and PIL runs mostly outside the GIL."""
    items = list(zip(*iterables))
    workers = self.options.resolved_workers()
    if workers == 1 or len(items) <= 1:
      return [fn(*item) for item in items]
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(workers,
                                                         thread_name_prefix='anonymize')
    return list(self._pool.map(lambda item: fn(*item), items))

  def _prepare(self, image: np.ndarray, found: detect.Detections) -> list[_Face]:
    faces = []
    for k, box in enumerate(found.boxes):
      face = _Face(box=np.asarray(box, np.float32),
                   keypoints=None if found.keypoints is None else found.keypoints[k],
                   detectors=tuple(found.sources[k]) if found.sources else ())
      faces.append(face)
      size = float(min(box[2] - box[0], box[3] - box[1]) + 1)
      if size < self.options.min_face_px:
        face.fail('too_small', f'{size:.0f} px < min_face_px {self.options.min_face_px:g}')
        continue
      try:
        landmarks = upright.fit_landmarks(self.predictor, image, box, face.keypoints)
        _check_landmarks(landmarks, box)
        aligned, mask, semantic = pipeline.prepare_face(image, landmarks, self.resolution)
      except Exception as e:  # pylint: disable=broad-except
        face.fail('landmarks_failed', f'{type(e).__name__}: {e}')
        continue
      face.landmarks, face.crop, face.mask, face.semantic = landmarks, aligned.crop, mask, semantic
      face.matrix = aligned.matrix
      coverage = _mask_coverage(mask, aligned.matrix, box)
      if coverage < self.options.min_mask_coverage:
        face.fail('mask_misses_face', f'the mask covers {coverage:.0%} of the box centre')
    return faces

  def _choose_targets(self, faces: list[_Face], keys: list[str]) -> np.ndarray | None:
    """Bank indices per face (paper §3.3); a tracked face reuses its track's target."""
    bank = self.generator.bank
    n = bank.num_identities
    mode = self.options.target
    sources = None
    if mode == 'farthest':
      chips = [self.identity.chip(f.source_image, f.box, f.landmarks) for f in faces]
      sources = self.identity.descriptors(chips)
    out = np.empty(len(faces), np.int64)
    for i, (face, key) in enumerate(zip(faces, keys)):
      if face.track is not None and (key, face.track) in self._track_targets:
        out[i] = self._track_targets[(key, face.track)]
        continue
      if mode == 'random':
        out[i] = self._random.integers(n)
      elif mode == 'seeded':
        out[i] = np.random.default_rng(
            [self.options.seed, _stable_int(key), face.track if face.track is not None
             else face.index]).integers(n)
      else:
        out[i] = int(np.argmax(np.linalg.norm(bank.means - sources[i], axis=1)))
      if face.track is not None:
        self._track_targets[(key, face.track)] = int(out[i])
    return out

  def new_video(self) -> FaceTracker:
    """A tracker for a new video; its faces keep their targets across frames."""
    self._track_targets = {}
    return FaceTracker()

  def _parse(self, faces: list[_Face]) -> None:
    """The face parser's maps of the aligned crops replace the polygon maps (paper §3.2)."""
    if not faces:
      return
    try:
      maps = semantic_source.parse_crops(self.parser, np.stack([f.crop for f in faces]))
    except Exception as e:  # pylint: disable=broad-except
      for face in faces:
        face.fail('parsing_error', f'{type(e).__name__}: {e}')
      return
    for face, semantic in zip(faces, maps):
      face.semantic = semantic

  def _generate(self, faces: list[_Face], keys: list[str]) -> None:
    if not faces:
      return
    crops = np.stack([f.crop for f in faces])
    masks = np.stack([f.mask for f in faces])
    try:
      if self.baseline is not None:
        from sdgan_jax import baselines  # pylint: disable=import-outside-toplevel
        out = baselines.apply_baseline(BASELINES[self.baseline], crops.astype(np.float32) / 255.0,
                                       masks > 0)
      else:
        targets = self._choose_targets(faces, keys)
        features = self.generator.bank.means[targets]
        semantic = np.stack([f.semantic for f in faces])
        out = self.generator.generate(crops, masks, semantic, features)
        for face, t in zip(faces, targets):
          face.target = int(t)
      out = np.asarray(out, np.float32)
      if out.shape != crops.shape:
        raise ValueError(f'generated {out.shape} for crops {crops.shape}')
    except Exception as e:  # pylint: disable=broad-except
      for face in faces:
        face.fail('generation_error', f'{type(e).__name__}: {e}')
      return
    for face, o in zip(faces, out):
      if np.all(np.isfinite(o)):
        face.output = np.clip(o, 0.0, 1.0)
      else:
        face.fail('generation_error', 'non-finite output')

  # -- the whole image

  def process(self, images: Sequence[np.ndarray], keys: Sequence[str] | None = None,
              trackers: Sequence[FaceTracker | None] | None = None
              ) -> list[tuple[np.ndarray, list[FaceResult]]]:
    """Anonymizes uint8 RGB ``images`` together (faces generated in shared batches).

    Args:
      images: uint8 [H, W, 3] images (photos, or consecutive frames of one video).
      keys: a name per image (file path): 'seeded' targets derive from it.
      trackers: per image, the ``FaceTracker`` of its video (``new_video``) or None.

    Returns:
      per image: (anonymized uint8 [H, W, 3], FaceResult per detected face).
    """
    images = [detect.check_image(im) for im in images]
    keys = list(keys) if keys is not None else [str(i) for i in range(len(images))]
    trackers = list(trackers) if trackers is not None else [None] * len(images)
    clock = time.perf_counter()
    found = self.detector.detect_many(images, map_fn=self._map)
    clock = self._lap('detect', clock)
    per_image = self._map(self._prepare, images, found)
    for faces, image, tracker in zip(per_image, images, trackers):
      ids = tracker.assign(np.array([f.box for f in faces])) if tracker else [None] * len(faces)
      for index, (face, track) in enumerate(zip(faces, ids)):
        face.track, face.index, face.source_image = track, index, image

    clock = self._lap('align', clock)
    if self.parser is not None:
      self._parse([f for faces in per_image for f in faces if f.reason is None])
      clock = self._lap('parse', clock)
    todo = [(f, k) for faces, k in zip(per_image, keys) for f in faces if f.reason is None]
    self._generate([f for f, _ in todo], [k for _, k in todo])
    clock = self._lap('generate', clock)

    outputs = self._map(self._paste_faces, images, per_image)
    clock = self._lap('paste', clock)
    self._check_identity(images, outputs, per_image)
    clock = self._lap('identity_check', clock)

    results = []
    for image, out, faces in zip(images, outputs, per_image):
      for face in faces:
        if face.reason is not None:
          out = cover(out, upright.face_region(face.box, face.keypoints), self.options)
      for face in faces:  # last line of defence: nothing of a detected face left as it was
        region = upright.face_region(face.box, face.keypoints)
        x0, y0, x1, y1 = _clip_box(region, out.shape)
        if x1 > x0 and y1 > y0 and np.array_equal(out[y0:y1, x0:x1], image[y0:y1, x0:x1]):
          face.fail('unchanged', 'the face region came out identical to the input')
          out = cover(out, region, dataclasses.replace(self.options, fallback='fill'))
      self.faces_processed += len(faces)
      results.append((out, [
          FaceResult(box=[float(v) for v in face.box],
                     status='anonymized' if face.reason is None else 'fallback',
                     reason=face.reason, detail=face.detail,
                     identity_distance=None if face.distance is None else round(face.distance, 4),
                     target=face.target, track=face.track,
                     detectors=list(face.detectors) or None,
                     region=[round(float(v), 1) for v in
                             upright.face_region(face.box, face.keypoints)])
          for face in faces]))
    self._lap('fallback', clock)
    return results

  def _lap(self, stage: str, since: float) -> float:
    now = time.perf_counter()
    self.timings[stage] = self.timings.get(stage, 0.0) + now - since
    return now

  def _paste_faces(self, image: np.ndarray, faces: list[_Face]) -> np.ndarray:
    """``image`` with every face still to anonymize pasted back (a failure: fallback)."""
    out = image.copy()
    for face in faces:
      if face.reason is None:
        try:
          out = self._paste(out, face)
        except Exception as e:  # pylint: disable=broad-except
          face.fail('paste_error', f'{type(e).__name__}: {e}')
    return out

  def _paste(self, out: np.ndarray, face: _Face) -> np.ndarray:
    r = self.resolution
    inside = face.mask.reshape(r, r, 1) > 0
    # Outside the mask, take what is in the output *now* rather than the source crop, so
    # the feathered edge of one face never blends original pixels back into a neighbour
    # that was pasted before it.
    current = align.warp_affine(out, face.matrix, (r, r)) / 255.0
    crop = np.where(inside, face.output, current)
    size = float(min(face.box[2] - face.box[0], face.box[3] - face.box[1]) + 1)
    return paste.paste_back(out, crop, face.matrix, face.mask,
                            feather_px=max(1.0, self.options.feather * size))

  def _check_identity(self, images, outputs, per_image) -> None:
    """Covers faces whose output is still the source person (module doc)."""
    if self.options.identity_threshold <= 0:
      return
    pending = [(i, f) for i, faces in enumerate(per_image) for f in faces if f.reason is None]
    if not pending:
      return
    try:
      chips = [self.identity.chip(images[i], f.box, f.landmarks) for i, f in pending]
      chips += [self.identity.chip(outputs[i], f.box, f.landmarks) for i, f in pending]
      desc = self.identity.descriptors(chips)
    except Exception as e:  # pylint: disable=broad-except
      for _, face in pending:
        face.fail('identity_check_error', f'{type(e).__name__}: {e}')
      return
    n = len(pending)
    distances = np.linalg.norm(desc[:n] - desc[n:], axis=1)
    for (_, face), d in zip(pending, distances):
      face.distance = float(d)
      if not np.isfinite(d) or d < self.options.identity_threshold:
        face.fail('still_matches_source', f'descriptor distance {d:.3f} < '
                  f'{self.options.identity_threshold:g}')


def _check_landmarks(landmarks: np.ndarray, box) -> None:
  """Raises unless the 68 points plausibly belong to the face in ``box``."""
  points = np.asarray(landmarks, np.float64)
  if points.shape != (68, 2) or not np.all(np.isfinite(points)):
    raise ValueError('the shape predictor did not return 68 finite points')
  x0, y0, x1, y1 = (float(v) for v in box)
  w, h = x1 - x0 + 1, y1 - y0 + 1
  near = ((points[:, 0] >= x0 - 0.5 * w) & (points[:, 0] <= x1 + 0.5 * w) &
          (points[:, 1] >= y0 - 0.5 * h) & (points[:, 1] <= y1 + 0.5 * h))
  if near.mean() < 0.9:
    raise ValueError(f'{(~near).sum()} of 68 landmarks lie far outside the face box')
  eyes = np.linalg.norm(points[36:42].mean(0) - points[42:48].mean(0))
  if not 0.15 * w <= eyes <= 1.0 * w:
    raise ValueError(f'eye distance {eyes:.1f} px is implausible for a {w:.0f}-px box')


def _mask_coverage(mask: np.ndarray, matrix: np.ndarray, box) -> float:
  """Share of a grid over the central half of ``box`` that falls inside the crop's mask."""
  x0, y0, x1, y1 = (float(v) for v in box)
  cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0 + 1, y1 - y0 + 1
  gx, gy = np.meshgrid(np.linspace(cx - w / 4, cx + w / 4, 9),
                       np.linspace(cy - h / 4, cy + h / 4, 9))
  crop_xy = align.apply_matrix(matrix, np.stack([gx.ravel(), gy.ravel()], axis=1))
  r = mask.shape[0]
  cols = np.round(crop_xy[:, 0]).astype(int)
  rows = np.round(crop_xy[:, 1]).astype(int)
  valid = (cols >= 0) & (cols < r) & (rows >= 0) & (rows < r)
  hit = np.zeros(len(cols), bool)
  hit[valid] = mask.reshape(r, r)[rows[valid], cols[valid]] > 0
  return float(hit.mean())


def _clip_box(box, shape, margin: float = 0.0) -> tuple[int, int, int, int]:
  """Integer [x0, x1) x [y0, y1) of ``box`` enlarged by ``margin`` per side, in the image."""
  x0, y0, x1, y1 = (float(v) for v in box)
  mw, mh = margin * (x1 - x0 + 1), margin * (y1 - y0 + 1)
  h, w = shape[:2]
  return (int(np.clip(np.floor(x0 - mw), 0, w)), int(np.clip(np.floor(y0 - mh), 0, h)),
          int(np.clip(np.ceil(x1 + mw) + 1, 0, w)), int(np.clip(np.ceil(y1 + mh) + 1, 0, h)))


def cover(image: np.ndarray, box, options: Options) -> np.ndarray:
  """The fail-closed fallback: pixelates or fills ``box`` enlarged by the margin."""
  from sdgan_jax import baselines  # pylint: disable=import-outside-toplevel

  x0, y0, x1, y1 = _clip_box(box, image.shape, options.fallback_margin)
  if x1 <= x0 or y1 <= y0:
    return image
  out = image.copy()
  region = out[y0:y1, x0:x1].astype(np.float32) / 255.0
  if options.fallback == 'fill':
    covered = baselines.solid_fill(region)
  else:
    covered = baselines.pixelate(region, min(options.fallback_blocks, *region.shape[:2]))
  out[y0:y1, x0:x1] = np.clip(np.round(covered * 255.0), 0, 255).astype(np.uint8)
  return out


def draw_detections(image: np.ndarray, faces: Sequence[FaceResult]) -> np.ndarray:
  """The (anonymized) image with each box drawn: green anonymized, red fallback."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel

  canvas = Image.fromarray(image)
  draw = ImageDraw.Draw(canvas)
  width = max(2, min(image.shape[:2]) // 200)
  for face in faces:
    colour = (40, 220, 60) if face.status == 'anonymized' else (230, 30, 30)
    x0, y0, x1, y1 = face.box
    draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
    label = 'ok' if face.status == 'anonymized' else face.reason
    draw.text((x0 + 2, max(0, y0 - 12)), label, fill=colour)
  return np.asarray(canvas)


# --- files ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Job:
  source: pathlib.Path
  dest: pathlib.Path
  kind: str | None   # 'image', 'video', None (skipped: ``reason``) or 'error' (``reason``)
  visualization: pathlib.Path | None = None  # NAME.detections.png (--visualize, photos)
  reason: str | None = None

  def outputs(self) -> list[pathlib.Path]:
    """The files this job writes."""
    if self.kind not in ('image', 'video'):
      return []
    return [self.dest] + ([self.visualization] if self.visualization is not None else [])


def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
  return path == folder or folder in path.parents


def _skipped_type(path: pathlib.Path) -> str:
  return (f'{path.suffix or "no extension"}: not an image or video type this tool handles '
          f'({", ".join(media.IMAGE_EXTENSIONS + media.VIDEO_EXTENSIONS)})')


def _walk(path: pathlib.Path, base: pathlib.Path, visualize: bool) -> list[Job]:
  """The jobs of an input folder: hidden entries and other types skipped (and said)."""
  jobs = []
  for dirpath, dirnames, filenames in os.walk(path):
    folder = pathlib.Path(dirpath)
    for d in sorted(dirnames):
      if d.startswith('.'):
        jobs.append(Job(folder / d, base / (folder / d).relative_to(path), None,
                        reason='hidden folder (its name starts with a dot): not searched; '
                               'rename it or give it as an input to include it'))
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    for name in sorted(filenames):
      src = folder / name
      dest = base / src.relative_to(path)
      if name.startswith('.'):
        jobs.append(Job(src, dest, None, reason='hidden file (its name starts with a dot): '
                        'not processed; rename it or give it as an input to include it'))
      elif src.is_symlink() and not src.exists():
        jobs.append(Job(src, dest, 'error', reason=f'dangling symbolic link to '
                        f'{os.readlink(src)} (its target does not exist): fix or remove it'))
      elif media.media_kind(src) is None:
        jobs.append(Job(src, dest, None, reason=_skipped_type(src)))
      else:
        jobs.append(_job(src, dest, media.media_kind(src), visualize))
  return jobs


def _job(src: pathlib.Path, dest: pathlib.Path, kind: str, visualize: bool) -> Job:
  vis = dest.with_name(f'{dest.stem}.detections.png') if visualize and kind == 'image' else None
  return Job(src, dest, kind, visualization=vis)


def plan_jobs(inputs: Iterable[str | os.PathLike], output_dir: str | os.PathLike, *,
              visualize: bool = False, overwrite: bool = False,
              report_path: str | os.PathLike | None = None) -> list[Job]:
  """Source -> destination of every file (folders recursive, mirrored under ``output_dir``),
  checked before any work starts.

  One folder input is mirrored into ``output_dir`` itself; with several inputs each folder
  gets a subfolder of its name. Hidden files and folders, other file types and dangling
  symbolic links are left out (they get a report row: skipped, or an error for the links).

  Raises:
    InputError: an input is missing; the output folder is (inside) an input folder or is a
      file; an output (photo, video, ``NAME.detections.png`` with ``visualize``, or the
      report at ``report_path``, default ``output_dir/REPORT_NAME``) would land on an input,
      on another output, or on an existing file (unless ``overwrite``); the report would be
      an input or inside an input folder; a folder to write into is not writable.
  """
  inputs = list(inputs)
  out_root = pathlib.Path(output_dir).absolute()
  if out_root.exists() and not out_root.is_dir():
    raise InputError(f'--output {output_dir} is an existing file, not a folder: give a folder '
                     '(it is made if missing)')
  out_root = out_root.resolve()
  jobs = []
  folders = []
  for raw in inputs:
    path = pathlib.Path(raw)
    if not path.exists():
      if path.is_symlink():
        raise InputError(f'input {raw} is a symbolic link to {os.readlink(path)}, which does '
                         'not exist: fix the link or leave it out')
      raise InputError(f'input {raw} does not exist')
    if path.is_dir():
      if _inside(out_root, path.resolve()):
        raise InputError(f'the output folder {output_dir} is inside the input folder {raw}: '
                         'outputs would mix with (and on a re-run overwrite) the inputs; '
                         'choose an --output outside it')
      folders.append(path.resolve())
      base = out_root / path.resolve().name if len(inputs) > 1 else out_root
      jobs += _walk(path, base, visualize)
    else:
      # A file named on the command line is tried as an image whatever its suffix.
      jobs.append(_job(path, out_root / path.name, media.media_kind(path) or 'image',
                       visualize))
  readable = [job.source for job in jobs if job.kind in ('image', 'video')]
  sources = {s.resolve(): s for s in readable}
  # (device, inode) catches hard links and other aliases of an input.
  inodes = {}
  for s in readable:
    st = os.stat(s)
    inodes[(st.st_dev, st.st_ino)] = s

  def input_at(path: pathlib.Path) -> pathlib.Path | None:
    if path.resolve() in sources:
      return sources[path.resolve()]
    if path.exists():
      st = os.stat(path)
      return inodes.get((st.st_dev, st.st_ino))
    return None

  written: dict[pathlib.Path, pathlib.Path] = {}
  existing = []
  for job in jobs:
    for dest in job.outputs():
      resolved = dest.resolve()
      if input_at(dest) is not None:
        raise InputError(f'{job.source} would be written over the input {resolved}: choose '
                         'another --output')
      if resolved in written:
        raise InputError(f'{job.source} and {written[resolved]} would both be written to '
                         f'{resolved}: give them separately or rename one')
      written[resolved] = job.source
      if dest.exists():
        existing.append(dest)
  report = pathlib.Path(report_path) if report_path else out_root / REPORT_NAME
  resolved = report.resolve()
  if input_at(report) is not None:
    raise InputError(f'--report {report} is the input {input_at(report)}: the report would '
                     'replace it; choose another --report path')
  if resolved in written:
    raise InputError(f'--report {report} is where {written[resolved]} is written: choose '
                     'another --report path')
  for folder in folders:
    if _inside(resolved, folder):
      raise InputError(f'--report {report} is inside the input folder {folder}: it would '
                       'mix with the inputs; choose a --report path outside it')
  if report.is_dir():
    raise InputError(f'--report {report} is a folder: give a file path')
  if report.exists():
    existing.append(report)
  if existing and not overwrite:
    more = f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''
    raise InputError(f'{existing[0]}{more} already exists: pass --overwrite (overwrite=True) '
                     'to replace existing outputs, or choose another --output')
  checked = set()
  for folder in {out_root, resolved.parent, *(d.parent for d in written)}:
    while not folder.exists() and folder != folder.parent:
      folder = folder.parent
    if folder in checked:
      continue
    checked.add(folder)
    try:
      media.check_writable(folder)
    except OSError as e:
      raise InputError(f'cannot write into {folder} ({e.strerror or e}): choose a writable '
                       '--output (and --report), or fix its permissions') from None
  return jobs


class Runner:
  """Anonymizes files into a folder and keeps the run's report (module doc)."""

  def __init__(self, anonymizer: FaceAnonymizer, output_dir: str | os.PathLike, *,
               visualize: bool = False, images_per_batch: int | None = None,
               frames_per_batch: int | None = None,
               progress: bool = True):
    self.anonymizer = anonymizer
    self.output_dir = pathlib.Path(output_dir)
    self.visualize = visualize
    options = anonymizer.options
    self.images_per_batch = options.images_per_batch if images_per_batch is None else (
        images_per_batch)
    self.frames_per_batch = options.frames_per_batch if frames_per_batch is None else (
        frames_per_batch)
    for name in ('images_per_batch', 'frames_per_batch'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
    self.progress = progress
    self.files: list[dict] = []
    self.warnings: list[str] = []
    self.interrupted: list[str] | None = None  # the inputs not finished, after a Ctrl-C
    self._bar = None
    self._faces = 0
    self._start = time.perf_counter()

  # progress: files done, with faces/s
  def _tick(self, faces: int, files: int = 0):
    self._faces += faces
    if self._bar is not None:
      rate = self._faces / max(time.perf_counter() - self._start, 1e-9)
      self._bar.set_postfix_str(f'{self._faces} faces, {rate:.2f} faces/s')
      if files:
        self._bar.update(files)

  def run(self, jobs: Sequence[Job]) -> dict:
    """Runs ``jobs``; a Ctrl-C stops it (``interrupted`` lists what was not finished) and
    the report of the files finished is returned."""
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    self._start = time.perf_counter()
    with tqdm(total=len(jobs), unit='file', disable=not self.progress,
              desc='anonymizing') as bar:
      self._bar = bar
      try:
        batch = []
        for job in jobs:
          if job.kind is None:
            self.files.append({'input': str(job.source), 'status': 'skipped',
                               'error': job.reason or _skipped_type(job.source)})
            self._tick(0, 1)
          elif job.kind == 'error':
            self.files.append({'input': str(job.source), 'status': 'error',
                               'error': job.reason})
            self._tick(0, 1)
          elif job.kind == 'video':
            self._video(job)
          else:
            batch.append(job)
            if len(batch) == self.images_per_batch:
              self._images(batch)
              batch = []
        if batch:
          self._images(batch)
      except KeyboardInterrupt:
        done = {f['input'] for f in self.files}
        self.interrupted = [str(j.source) for j in jobs if str(j.source) not in done]
      finally:
        self._bar = None
    return self.report()

  def _images(self, jobs: Sequence[Job]) -> None:
    start = time.perf_counter()
    loaded = []
    for job in jobs:
      try:
        loaded.append((job, media.read_image(job.source), time.perf_counter()))
      except media.UnreadableMediaError as e:
        self.files.append(_file_entry(job, 'image', error=str(e),
                                      seconds=time.perf_counter() - start))
        self._tick(0, 1)
    single = [item for item in loaded if item[1].frames is None]
    if single:
      self._anonymize_loaded(single, start)
    for job, image, _ in loaded:
      if image.frames is not None:
        self._animation(job, image)

  def _anonymize_loaded(self, loaded: list, start: float) -> None:
    """Anonymizes and writes ``loaded`` [(job, LoadedImage, time read)] together; if that
    fails, each on its own, so that one bad photo does not cost the others their outputs."""
    read_done = time.perf_counter()
    try:
      results = self.anonymizer.process([im.rgb for _, im, _ in loaded],
                                        keys=[str(job.source) for job, _, _ in loaded])
    except Exception as e:  # pylint: disable=broad-except
      if len(loaded) > 1:
        for item in loaded:
          self._anonymize_loaded([item], time.perf_counter())
        return
      # Nothing is written for this image: an unprocessed photo must not leave.
      for job, _, _ in loaded:
        self.files.append(_file_entry(job, 'image', error=f'{type(e).__name__}: {e}',
                                      trace=traceback.format_exc(limit=4)))
        self._tick(0, 1)
      return
    share = (time.perf_counter() - read_done) / len(loaded)
    for (job, image, t_read), (out, faces) in zip(loaded, results):
      entry = _file_entry(job, 'image', faces=faces)
      self._write_image(entry, job, image, out, [(out, faces)])
      entry['seconds'] = round(max(t_read - start, 0.0) + share, 3)
      self.files.append(entry)
      self._tick(len(faces), 1)

  def _write_image(self, entry: dict, job: Job, image: media.LoadedImage, out,
                   frames: list) -> None:
    """Writes one photo (``out``: its pixels, or a list of frames) and its visualization."""
    if image.notes:
      entry['notes'] = list(image.notes)
    try:
      media.write_image(job.dest, image, out, keep_exif=self.anonymizer.options.keep_exif,
                        quality=self.anonymizer.options.quality)
      entry['output'] = str(job.dest)
      if image.transposed:
        entry['exif_orientation_applied'] = True
      if self.visualize and job.visualization is not None:
        vis, faces = frames[0]  # the first frame of an animation
        media.write_image(job.visualization, media.LoadedImage(rgb=vis),
                          draw_detections(vis, faces))
        entry['visualization'] = str(job.visualization)
    except Exception as e:  # pylint: disable=broad-except
      entry['error'] = f'writing failed: {type(e).__name__}: {e}'
      entry['status'] = 'error'

  def _animation(self, job: Job, image: media.LoadedImage) -> None:
    """Every frame of an animation or multi-page file, through the video path (tracks,
    shared batches, ``TrackCoverage``), written back as one file with its timing."""
    start = time.perf_counter()
    tracker = self.anonymizer.new_video()
    coverage = TrackCoverage(self.anonymizer.options.track_cover_frames,
                             self.anonymizer.options)
    done = []
    try:
      rgbs = [frame.rgb for frame in image.frames]
      for lo in range(0, len(rgbs), self.frames_per_batch):
        chunk = rgbs[lo:lo + self.frames_per_batch]
        results = self.anonymizer.process(chunk, keys=[str(job.source)] * len(chunk),
                                          trackers=[tracker] * len(chunk))
        for out, faces in results:
          coverage.add(out, faces, [f.region or f.box for f in faces])
        done += coverage.ready()
      done += coverage.ready(final=True)
    except Exception as e:  # pylint: disable=broad-except
      self.files.append(_file_entry(job, 'image', error=f'{type(e).__name__}: {e}',
                                    trace=traceback.format_exc(limit=4),
                                    frames=len(image.frames),
                                    seconds=time.perf_counter() - start))
      self._tick(0, 1)
      return
    faces = [f for _, frame_faces in done for f in frame_faces]
    entry = _file_entry(job, 'image', faces=[])
    entry.update(_face_counts(faces))
    entry['faces'] = [dict(f.to_json(), frame=k) for k, (_, frame_faces) in enumerate(done)
                      for f in frame_faces]
    entry['frames'] = len(done)
    entry['tracks'] = len({f.track for f in faces})
    entry['covered_by_tracking'] = coverage.covered
    self._write_image(entry, job, image, [out for out, _ in done], done)
    entry['seconds'] = round(time.perf_counter() - start, 3)
    self.files.append(entry)
    self._tick(len(faces), 1)

  def _video(self, job: Job) -> None:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    start = time.perf_counter()
    entry = _file_entry(job, 'video', faces=[])
    entry['frames'] = 0
    try:
      info, frames = media.read_video(job.source)
    except media.UnreadableMediaError as e:
      entry.update(status='error', error=str(e), seconds=round(time.perf_counter() - start, 3))
      self.files.append(entry)
      self._tick(0, 1)
      return
    tracker = self.anonymizer.new_video()
    coverage = TrackCoverage(self.anonymizer.options.track_cover_frames,
                             self.anonymizer.options)
    faces: list[FaceResult] = []
    writer = None
    ok = False
    read = 0
    try:
      try:
        writer = media.VideoWriter(job.dest, info, audio_from=job.source if info.has_audio
                                   else None)
      except Exception:  # pylint: disable=broad-except
        writer = media.VideoWriter(job.dest, info)
        entry['audio'] = 'dropped (the container would not take it)'
      total = info.nframes if np.isfinite(info.nframes) else None
      with tqdm(total=total, unit='frame', leave=False, disable=not self.progress,
                desc=job.source.name) as bar:
        chunk = []
        for frame in frames:
          chunk.append(frame)
          read += 1
          if len(chunk) == self.frames_per_batch:
            faces += self._frames(chunk, job, tracker, coverage, writer)
            bar.update(len(chunk))
            chunk = []
        faces += self._frames(chunk, job, tracker, coverage, writer, final=True)
        bar.update(len(chunk))
      ok = True
    except Exception as e:  # pylint: disable=broad-except
      entry.update(status='error', error=f'{type(e).__name__}: {e}',
                   trace=traceback.format_exc(limit=4))
    finally:
      if writer is not None:
        try:
          writer.close(ok=ok)
        except Exception as e:  # pylint: disable=broad-except
          ok = False
          entry.update(status='error', error=f'encoding failed: {type(e).__name__}: {e}')
    entry.update(_face_counts(faces))
    entry['frames'] = writer.frames_written if writer is not None else 0
    entry['tracks'] = len({f.track for f in faces})
    entry['covered_by_tracking'] = coverage.covered
    if ok:
      entry['output'] = str(job.dest)
      if info.has_audio:
        entry.setdefault('audio', 'kept')
      if np.isfinite(info.nframes):
        entry['frames_declared'] = int(info.nframes)
        # The declared count is the container's duration times the frame rate: allow for
        # rounding and a slightly longer audio stream.
        if info.nframes - read > max(1.0, 0.25 * info.fps, 0.02 * info.nframes):
          entry.update(status='error', error=(
              f'only {read} of the {int(info.nframes)} frames the file declares could be '
              'decoded (truncated or damaged?): the output holds those '
              f'{read}; repair or re-export the video and run it again'))
    entry['seconds'] = round(time.perf_counter() - start, 3)
    self.files.append(entry)
    self._tick(0, 1)

  def _frames(self, chunk, job, tracker, coverage: TrackCoverage, writer,
              final: bool = False) -> list[FaceResult]:
    """Anonymizes ``chunk``; writes the frames ``coverage`` releases (all when ``final``)."""
    results = self.anonymizer.process(chunk, keys=[str(job.source)] * len(chunk),
                                      trackers=[tracker] * len(chunk)) if chunk else []
    for out, frame_faces in results:
      coverage.add(out, frame_faces, [f.region or f.box for f in frame_faces])
    faces = []
    for out, frame_faces in coverage.ready(final):
      writer.write(out)
      faces += frame_faces
    self._tick(len(faces))
    return faces

  def report(self) -> dict:
    seconds = time.perf_counter() - self._start
    totals = {'files': len(self.files),
              'errors': sum(f['status'] == 'error' for f in self.files),
              'skipped': sum(f['status'] == 'skipped' for f in self.files)}
    for key in ('faces_found', 'anonymized', 'fallbacks', 'frames', 'covered_by_tracking'):
      totals[key] = sum(f.get(key, 0) for f in self.files)
    images = sum(f.get('kind') == 'image' and f['status'] == 'ok' for f in self.files)
    totals['seconds'] = round(seconds, 3)
    totals['images_per_s'] = round((images + totals['frames']) / max(seconds, 1e-9), 4)
    totals['faces_per_s'] = round(totals['faces_found'] / max(seconds, 1e-9), 4)
    options = dataclasses.asdict(self.anonymizer.options)
    warnings = list(self.warnings)
    if not self.anonymizer.options.identity_check:
      warnings.insert(0, IDENTITY_CHECK_OFF)
    report = {'tool': 'sdgan_jax.anonymize', 'method': self.anonymizer.method,
              'semantic_maps': self.anonymizer.semantic_maps,
              'created': datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec='seconds'),
              'options': options, 'warnings': warnings, 'totals': totals,
              'files': self.files}
    if self.interrupted is not None:
      report['interrupted'] = True
      report['unfinished'] = self.interrupted
    return report


IDENTITY_CHECK_OFF = ('the identity re-check is off (--no_identity_check / identity_threshold '
                      '0): output faces were not checked against the source person, so a '
                      'face the generator left recognizable is not covered by the fallback')


def _face_counts(faces: Sequence[FaceResult]) -> dict:
  """Counts of detected faces (the frames where tracking alone covered a face are
  counted apart, as ``covered_by_tracking``)."""
  faces = [f for f in faces if f.reason != 'tracked_not_detected']
  reasons: dict[str, int] = {}
  for f in faces:
    if f.status != 'anonymized':
      reasons[f.reason] = reasons.get(f.reason, 0) + 1
  return {'faces_found': len(faces),
          'anonymized': sum(f.status == 'anonymized' for f in faces),
          'fallbacks': sum(f.status != 'anonymized' for f in faces),
          'fallback_reasons': reasons}


def _file_entry(job: Job, kind: str, *, faces: Sequence[FaceResult] | None = None,
                error: str | None = None, seconds: float | None = None, **extra) -> dict:
  entry: dict[str, Any] = {'input': str(job.source), 'kind': kind,
                           'status': 'error' if error else 'ok'}
  if error:
    entry['error'] = error
  if faces is not None:
    entry.update(_face_counts(faces))
    if kind == 'image':
      entry['faces'] = [f.to_json() for f in faces]
  if seconds is not None:
    entry['seconds'] = round(seconds, 3)
  entry.update(extra)
  return entry


def write_report(report: dict, path: str | os.PathLike) -> pathlib.Path:
  """Writes the run's JSON report atomically."""
  path = pathlib.Path(path)
  with media.atomic_path(path) as tmp:
    tmp.write_text(json.dumps(report, indent=1) + '\n')
  return path


def build_anonymizer(checkpoint: str | os.PathLike | None = None, *,
                     baseline: str | None = None, options: Options | None = None,
                     weights_dir: str | os.PathLike | None = None,
                     batch_size: int | None = None, step: int | None = None,
                     dtype: str | None = None) -> FaceAnonymizer:
  """A ``FaceAnonymizer`` from a training workdir (or a baseline), with errors naming fixes.

  The face parser of a model trained on parser maps (``semantic_source``) is loaded and
  checked before the generator: ``options.parser_workdir``, else the one its record names.

  Raises:
    FileNotFoundError: no checkpoint / workdir (names the training command), or the identity
      backbone's weights are missing (``WeightsNotFoundError``, names ``make weights``).
    semantic_source.SemanticMapsError: the parser and the model do not match (a parser for
      a polygon model, the recorded parser missing and none given, other weights).
  """
  import jax  # pylint: disable=import-outside-toplevel

  options = options or Options()
  if batch_size is None:
    batch_size = options.batch_size
  if batch_size is None:
    batch_size = 8 if jax.default_backend() == 'cpu' else 64
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  generator = parser = None
  if baseline is None:
    if checkpoint is None:
      raise FileNotFoundError(
          'no --checkpoint given: train one with `make demo` (the demo model, CPU minutes) or '
          '`python run.py --config=configs/demo.py --workdir=workdirs/demo`, then pass '
          '--checkpoint workdirs/demo; or run a classic method with --baseline')
    if not pathlib.Path(checkpoint).is_dir():
      raise FileNotFoundError(
          f'checkpoint workdir {checkpoint} does not exist: make it with `make demo` or '
          f'`python run.py --config=configs/demo.py --workdir={checkpoint}`')
    parser = semantic_source.parser_for(semantic_source.read_record(checkpoint),
                                        options.parser_workdir, model=f'the model {checkpoint}',
                                        batch_size=batch_size)
    from sdgan_jax import inference  # pylint: disable=import-outside-toplevel
    generator = inference.TrainedGenerator.from_workdir(checkpoint, step, dtype=dtype,
                                                        batch_size=batch_size)
  identity = None
  if options.identity_check or (generator is not None and options.target == 'farthest'):
    identity = IdentityBackbone(weights_dir, batch_size=batch_size)
  return FaceAnonymizer(generator, baseline, options, identity, weights_dir=weights_dir,
                        parser=parser)


def anonymize_paths(inputs: Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                    anonymizer: FaceAnonymizer, *, report_path: str | os.PathLike | None = None,
                    visualize: bool = False, progress: bool = True,
                    images_per_batch: int | None = None, frames_per_batch: int | None = None,
                    overwrite: bool = False) -> dict:
  """Anonymizes files and folders into ``output_dir``; writes and returns the JSON report.

  Everything is checked before the work starts (``plan_jobs``): existing outputs are only
  replaced with ``overwrite``. Temporary files a killed run left in the folders written to
  are removed first (the report lists them). Batch sizes default to the anonymizer's
  ``Options``.

  Raises:
    InputError: see ``plan_jobs``.
    Interrupted: Ctrl-C; the report of the files finished was written.
    ReportWriteError: the work is done but the report could not be written.
  """
  jobs = plan_jobs(inputs, output_dir, visualize=visualize, overwrite=overwrite,
                   report_path=report_path)
  if not jobs:
    raise InputError(f'no files under {", ".join(map(str, inputs))}')
  path = pathlib.Path(report_path) if report_path else pathlib.Path(output_dir) / REPORT_NAME
  runner = Runner(anonymizer, output_dir, visualize=visualize, progress=progress,
                  images_per_batch=images_per_batch, frames_per_batch=frames_per_batch)
  removed = []
  for folder in sorted({path.parent, *(d.parent for job in jobs for d in job.outputs())}):
    removed += media.remove_stale_temporaries(folder)
  report = runner.run(jobs)
  report['inputs'] = [str(p) for p in inputs]
  report['output_dir'] = str(output_dir)
  report['overwrite'] = overwrite
  if removed:
    report['removed_temporary_files'] = [str(p) for p in removed]
  report['report'] = str(path)
  try:
    write_report(report, path)
  except OSError as e:
    message = (f'could not write the report {path} ({e.strerror or e}); the outputs are '
               'written: free some space or give another --report')
    if runner.interrupted is not None:
      raise Interrupted(report, message) from None
    raise ReportWriteError(message, report) from None
  if runner.interrupted is not None:
    raise Interrupted(report)
  return report
