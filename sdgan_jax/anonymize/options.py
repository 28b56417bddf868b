"""How faces are anonymized: ``Options``, the one home of the anonymizer's defaults and limits.

The command line (``sdgan_jax.anonymize.cli``) takes its flags' defaults from these fields
and its range checks from ``Options.__post_init__``.
"""

from __future__ import annotations

import dataclasses
import os

from sdgan_jax import cpu_export
from sdgan_jax.faces import ensemble, pipeline, verify

TARGET_MODES = ('random', 'seeded', 'farthest')
LANDMARK_SOURCES = ('mesh', 'dlib')
# Real faces scored 0.67-1.0 on the face mesh (docs/detection.md): a presence threshold
# near 1 would drop them and write them out untouched.
MAX_PRESENCE_THRESHOLD = 0.9
FALLBACKS = ('pixelate', 'fill')
# --baseline name -> sdgan_jax.baselines name (the paper's table rows).
BASELINES = {'blur': 'blur17', 'pixelate': 'pixelate8', 'mask': 'mask'}
# Crop size for --baseline without a checkpoint: the paper's quantitative resolution.
BASELINE_RESOLUTION = 64
# dlib's same-person distance (``models.dlib_resnet.SAME_PERSON_THRESHOLD``; not imported
# from there: it would load JAX and Flax with the options).
DEFAULT_IDENTITY_THRESHOLD = 0.6
# Threads when Options.workers is 0: dlib's landmarks, alignment, paste-back (and dlib's HOG
# detector when it is in the ensemble) run outside the GIL, one dlib detector per thread.
MAX_AUTO_WORKERS = 8
# Photos (video frames) processed together: prepared in parallel threads, generated in shared
# batches. Eight keep MAX_AUTO_WORKERS threads busy.
IMAGES_PER_BATCH = 8
FRAMES_PER_BATCH = 8
# The score thresholds a detector's scores can cross: BlazeFace's are probabilities, so 0
# keeps every anchor (thousands of boxes) and 1 or more none; dlib's are SVM margins
# (HOG, added to its decision threshold) or confidences (CNN), faces scoring about -1 to 3.
# A threshold outside finds every box or no face at all, silently: refused.
BLAZEFACE_THRESHOLDS = (0.0, 1.0)  # exclusive
DLIB_THRESHOLDS = (-1.0, 2.0)  # inclusive
# ``detect_min_face_px`` above this is refused: the pyramid finds faces from it up to the
# whole photo, so a larger value only loses the faces in between (or all of them when
# photos are smaller than it).
MAX_DETECT_MIN_FACE_PX = 1024.0
# The fallback's pixelation blocks across a face's region: more than 16 can leave a face
# recognizable (dlib matched a face pixelated at 100 blocks to its source); 1 is a flat
# colour.
FALLBACK_BLOCKS = (1, 16)


@dataclasses.dataclass
class Options:
  """How faces are anonymized (``sdgan_jax.anonymize``'s doc has the fail-closed rules).

  Attributes:
    target: 'random', 'seeded' or 'farthest' target identities.
    seed: seed of 'seeded' targets.
    fallback: 'pixelate' or 'fill' for faces that cannot be anonymized.
    fallback_blocks: pixelation blocks across the fallback region (``FALLBACK_BLOCKS``);
      a pixelated face that still matches its source is pixelated coarser, then filled.
    fallback_margin: the detection box is enlarged by this fraction on each side.
    identity_threshold: output faces closer than this to the source (dlib descriptor
      distance) are covered by the fallback; 0 turns the check off (the report then warns;
      the CLI also has --no_identity_check); negative values are refused.
    min_face_px: faces whose box is smaller are covered by the fallback (>= 0).
    min_mask_coverage: share of the box's central half the face mask must cover.
    detectors: the ensemble's detectors (``faces.ensemble.DETECTORS``), merged after NMS.
    detector_thresholds: per-detector score thresholds overriding the defaults, within
      the detector's score range (``check_detector_threshold``).
    detect_min_face_px: the smallest face width the BlazeFace pyramids look for (faces
      below ``min_face_px`` are still covered by the fallback when found); at most
      ``MAX_DETECT_MIN_FACE_PX``.
    upsample: dlib's upsampling, for 'hog' and 'cnn' in ``detectors``.
    verify_faces: every candidate of the detectors is judged by the face mesh's presence
      score and its box tightened to the mesh (``faces.verify``); False keeps every
      candidate as the detectors gave it.
    presence_threshold: the mesh's presence score from which a candidate is a face.
    landmarks: where a face's 68 points come from: 'mesh' (the face mesh, any pose) or
      'dlib' (dlib's shape predictor, turned upright by the keypoints).
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
    cpu_backend: on CPUs, where the generator and detectors run (``sdgan_jax.cpu_export``):
      'auto' (TensorFlow bfloat16 for the generator on CPUs with AMX-BF16 or AVX512-BF16,
      else XLA), 'xla', 'tf_float32' or 'tf_bfloat16'. The identity check stays on XLA in
      float32 whatever this says. Default 'xla': today's path on every CPU.
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
  verify_faces: bool = True
  presence_threshold: float = verify.PRESENCE_THRESHOLD
  landmarks: str = 'mesh'
  feather: float = 0.06
  keep_exif: bool = False
  quality: int = 95
  workers: int = 0
  track_cover_frames: int = 5
  parser_workdir: str | None = None
  batch_size: int | None = None
  images_per_batch: int = IMAGES_PER_BATCH
  frames_per_batch: int = FRAMES_PER_BATCH
  # 'xla' until the bfloat16 export's speed is measured on a CPU with AMX (docs/cpu_inference.md)
  cpu_backend: str = 'xla'

  def __post_init__(self):
    if self.target not in TARGET_MODES:
      raise ValueError(f'target must be one of {TARGET_MODES}, got {self.target!r}')
    if self.fallback not in FALLBACKS:
      raise ValueError(f'fallback must be one of {FALLBACKS}, got {self.fallback!r}')
    lo, hi = FALLBACK_BLOCKS
    if isinstance(self.fallback_blocks, bool) or not lo <= self.fallback_blocks <= hi:
      raise ValueError(
        f'fallback_blocks must be between {lo} and {hi} (more blocks leave a '
        f'face recognizable; for a flat cover use fallback fill), got '
        f'{self.fallback_blocks}'
      )
    if self.workers < 0:
      raise ValueError(f'workers must be >= 0 (0: one per CPU core), got {self.workers}')
    self.detectors = ensemble.parse_detectors(self.detectors)
    if self.track_cover_frames < 0:
      raise ValueError(f'track_cover_frames must be >= 0, got {self.track_cover_frames}')
    if not 0.0 <= self.presence_threshold <= MAX_PRESENCE_THRESHOLD:  # also refuses NaN
      raise ValueError(
        "presence_threshold is the face mesh's probability, between 0 and "
        f'{MAX_PRESENCE_THRESHOLD:g} (higher drops real faces, which are then '
        f'written out untouched), got {self.presence_threshold}'
      )
    cpu_export.check_backend(self.cpu_backend)
    if self.landmarks not in LANDMARK_SOURCES:
      raise ValueError(f'landmarks must be one of {LANDMARK_SOURCES}, got {self.landmarks!r}')
    if not 0 < self.detect_min_face_px <= MAX_DETECT_MIN_FACE_PX:  # also refuses NaN
      raise ValueError(
        f'detect_min_face_px must be > 0 and <= {MAX_DETECT_MIN_FACE_PX:g} '
        '(the smallest face width to look for; larger faces are found '
        f'anyway), got {self.detect_min_face_px:g}'
      )
    self.detector_thresholds = dict(self.detector_thresholds)
    for name, value in self.detector_thresholds.items():
      check_detector_threshold(name, value, self.detectors)
    if not self.identity_threshold >= 0:  # also refuses NaN
      raise ValueError(
        f"identity_threshold must be > 0 (dlib's same-person distance is "
        f'{DEFAULT_IDENTITY_THRESHOLD:g}), got {self.identity_threshold:g}; to '
        'run without the identity check, turn it off explicitly '
        '(--no_identity_check, identity_threshold=0)'
      )
    if not self.min_face_px >= 0:
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

  def detector_ensemble(self, weights_dir=None) -> ensemble.EnsembleDetector:
    """The first detection stage these options ask for (before the face mesh's check)."""
    return ensemble.EnsembleDetector(
      self.detectors,
      self.detector_thresholds,
      min_face_px=self.detect_min_face_px,
      upsample=self.upsample,
      weights_dir=weights_dir,
    )


def check_detector_threshold(name: str, value: float, detectors) -> None:
  """Raises ValueError unless ``value`` is a score threshold detector ``name`` (one of
  ``detectors``) can use (``BLAZEFACE_THRESHOLDS``, ``DLIB_THRESHOLDS``)."""
  if name not in detectors:
    raise ValueError(
      f'detector_threshold {name}: not one of the detectors in use ({",".join(detectors)})'
    )
  if name in ensemble.DLIB_DETECTORS:
    lo, hi = DLIB_THRESHOLDS
    ok, span = lo <= value <= hi, f'between {lo:g} and {hi:g}'
  else:
    lo, hi = BLAZEFACE_THRESHOLDS
    ok, span = lo < value < hi, f'a score strictly between {lo:g} and {hi:g}'
  if not ok:  # also NaN
    raise ValueError(
      f'detector_threshold {name}={value:g} is outside its range: give '
      f'{span} (lower finds more faces and more false ones)'
    )


def defaults() -> dict:
  """Field name -> default of ``Options`` (the fields with a plain default)."""
  return {
    f.name: f.default for f in dataclasses.fields(Options) if f.default is not dataclasses.MISSING
  }
