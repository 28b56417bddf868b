"""``FaceAnonymizer``: detect, prepare, generate (or baseline), paste back, check, fall back.

The steps and the fail-closed rules are those of ``sdgan_jax.anonymize``'s doc (paper §3,
§3.4); ``loading.build_anonymizer`` makes one from a training workdir.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import os
import time
from collections.abc import Sequence

import numpy as np

from sdgan_jax import semantic_source
from sdgan_jax.anonymize import report as run_report
from sdgan_jax.anonymize.fallback import clip_box, cover
from sdgan_jax.anonymize.identity_check import IdentityBackbone
from sdgan_jax.anonymize.options import BASELINE_RESOLUTION, BASELINES, Options
from sdgan_jax.anonymize.tracking import FaceTracker
from sdgan_jax.faces import align, detect, mesh, paste, pipeline, verify
from sdgan_jax.faces.pipeline import Face


def _stable_int(text: str) -> int:
  """A hash of ``text`` that is the same in every process (``hash`` is salted); a file
  name's bytes that are not UTF-8 (surrogate escapes) hash as those bytes."""
  return int.from_bytes(
    hashlib.sha256(text.encode('utf-8', 'surrogateescape')).digest()[:8], 'little'
  )


class FaceAnonymizer:
  """Detect, align, generate (or baseline), paste back, check, fall back (package doc).

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
    parser: the face parser (``parser_inference.TrainedParser``) of a generator trained on
      parser maps; None: the one its record names, or ``options.parser_workdir``'s
      (``semantic_source.parser_for`` checks it is the recorded one).

  Attributes:
    semantic_maps: what the generator gets: 'polygons' or the parser's fingerprint (None
      for baselines).
  """

  def __init__(
    self,
    generator=None,
    baseline: str | None = None,
    options: Options | None = None,
    identity: IdentityBackbone | None = None,
    resolution: int | None = None,
    detector=None,
    weights_dir: str | os.PathLike | None = None,
    parser=None,
  ):
    if (generator is None) == (baseline is None):
      raise ValueError('give exactly one of a trained generator and a baseline')
    if baseline is not None and baseline not in BASELINES:
      raise ValueError(f'unknown baseline {baseline!r}; choose from {sorted(BASELINES)}')
    self.options = options or Options()
    from sdgan_jax import cpu_export  # pylint: disable=import-outside-toplevel

    cpu_export.set_backend(self.options.cpu_backend)  # before the detectors are built
    self.generator = generator
    self.baseline = baseline
    if generator is not None and generator.bank is None:
      raise ValueError('the generator has no identity bank to draw target identities from')
    if needs_identity(self.options, generator) and identity is None:
      raise ValueError(
        'the identity check and farthest targets need the identity backbone '
        '(IdentityBackbone()); set identity_threshold=0 to run without it'
      )
    self.identity = identity
    self.resolution = int(
      generator.resolution if generator is not None else resolution or BASELINE_RESOLUTION
    )
    self.parser, self.semantic_maps = self._semantic_parser(parser)
    uses_mesh = self.options.verify_faces or self.options.landmarks == 'mesh'
    self.mesh = mesh.FaceMesh.load(weights_dir) if uses_mesh else None
    self.detector = detector or self.options.detector_ensemble(weights_dir)
    if self.options.verify_faces:
      self.detector = verify.VerifiedDetector(
        self.detector, self.mesh, self.options.presence_threshold
      )
    self.predictor = self.mesh if self.options.landmarks == 'mesh' else detect.LandmarkPredictor()
    self._random = np.random.default_rng()
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None
    self._track_targets: dict[tuple[str, int], int] = {}
    self.faces_processed = 0
    # Per input key, the candidates the face mesh judged not to be faces (``take_rejected``).
    self._rejected: dict[str, list[dict]] = {}
    self.timings: dict[str, float] = {}  # seconds per stage of ``process``, summed

  def _semantic_parser(self, parser):
    """(the face parser or None, the ``semantic_maps`` label) of the generator's record."""
    given = parser if parser is not None else self.options.parser_workdir
    if self.generator is None:
      if given:
        raise semantic_source.SemanticMapsError(
          'a face parser was given, but the baselines use no semantic maps: leave out --parser'
        )
      return None, None
    record = getattr(self.generator, 'semantic_maps', None) or semantic_source.SemanticSource()
    model = f'the model {getattr(self.generator, "workdir", None) or "(generator)"}'
    parser = semantic_source.parser_for(
      record, given, model=model, batch_size=self.generator.batch_size
    )
    return parser, record.label

  @property
  def method(self) -> str:
    return f'baseline:{self.baseline}' if self.baseline else 'sdgan'

  def new_video(self) -> FaceTracker:
    """A tracker for a new video; its faces keep their targets across frames."""
    self._track_targets = {}
    return FaceTracker()

  # -- the whole image

  def process(
    self,
    images: Sequence[np.ndarray],
    keys: Sequence[str] | None = None,
    trackers: Sequence[FaceTracker | None] | None = None,
  ) -> list[tuple[np.ndarray, list[Face]]]:
    """Anonymizes uint8 RGB ``images`` together (faces generated in shared batches).

    Args:
      images: uint8 [H, W, 3] images (photos, or consecutive frames of one video).
      keys: a name per image (file path): 'seeded' targets derive from it.
      trackers: per image, the ``FaceTracker`` of its video (``new_video``) or None.

    Returns:
      per image: (anonymized uint8 [H, W, 3], a ``Face`` per detected face, its pixels
      released: its ``to_json`` is its report row).
    """
    images = [detect.check_image(im) for im in images]
    keys = list(keys) if keys is not None else [str(i) for i in range(len(images))]
    trackers = list(trackers) if trackers is not None else [None] * len(images)
    with self._timed('detect'):
      found = self.detector.detect_many(images, map_fn=self._map)
    for key, detections in zip(keys, found):
      self._rejected.setdefault(key, []).extend(run_report.rejected_rows(detections))
    with self._timed('align'):
      per_image = self._map(self._prepare, images, found)
      for faces, tracker in zip(per_image, trackers):
        if tracker is not None:
          for face, track in zip(faces, tracker.assign(np.array([f.box for f in faces]))):
            face.track = track
    if self.parser is not None:
      with self._timed('parse'):
        self._parse([f for faces in per_image for f in faces if f.reason is None])
    with self._timed('generate'):
      todo = [
        (f, key, image)
        for faces, key, image in zip(per_image, keys, images)
        for f in faces
        if f.reason is None
      ]
      self._generate([f for f, _, _ in todo], [k for _, k, _ in todo], [im for _, _, im in todo])
    with self._timed('paste'):
      outputs = self._map(self._paste_faces, images, per_image)
    with self._timed('identity_check'):
      self._check_identity(images, outputs, per_image)
    with self._timed('fallback'):
      return [
        self._cover_failed(image, out, faces)
        for image, out, faces in zip(images, outputs, per_image)
      ]

  def take_rejected(self, key: str) -> list[dict]:
    """The report rows of the candidates the face mesh rejected in the images (frames)
    processed under ``key`` so far, forgotten once taken."""
    return self._rejected.pop(key, [])

  @contextlib.contextmanager
  def _timed(self, stage: str):
    """Adds the seconds of a stage that finished to ``timings[stage]``."""
    start = time.perf_counter()
    yield
    self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

  def _map(self, fn, *iterables) -> list:
    """``list(map(fn, *iterables))``, items in parallel threads (``Options.workers``): the
    per-image work of dlib, numpy and PIL runs mostly outside the GIL."""
    items = list(zip(*iterables))
    workers = self.options.resolved_workers()
    if workers == 1 or len(items) <= 1:
      return [fn(*item) for item in items]
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix='anonymize')
    return list(self._pool.map(lambda item: fn(*item), items))

  # -- the stages

  def _prepare(self, image: np.ndarray, found: detect.Detections) -> list[Face]:
    """The faces of one image, each prepared through ``faces.pipeline``'s one path."""
    return [
      pipeline.prepare_detected(
        image,
        face,
        self.predictor,
        self.resolution,
        min_face_px=self.options.min_face_px,
        min_mask_coverage=self.options.min_mask_coverage,
      )
      for face in pipeline.detected_faces(found)
    ]

  def _parse(self, faces: list[Face]) -> None:
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

  def _choose_targets(
    self, faces: list[Face], keys: list[str], images: list[np.ndarray]
  ) -> np.ndarray:
    """Bank indices per face (paper §3.3); a tracked face reuses its track's target.

    ``IdentityBank.sample_targets`` does not serve here: it draws for faces of the training
    split (it needs their labels), never per file and face ('seeded'), and its 'farthest'
    is from the source identity's mean, not from this face's descriptor.
    """
    bank = self.generator.bank
    n = bank.num_identities
    mode = self.options.target
    sources = self.identity.face_descriptors(images, faces) if mode == 'farthest' else None
    out = np.full(len(faces), -1, np.int64)
    for i, (face, key) in enumerate(zip(faces, keys)):
      if face.track is not None and (key, face.track) in self._track_targets:
        out[i] = self._track_targets[(key, face.track)]
        continue
      try:  # one face's (one file's) failure stays its own: -1, the face fails
        if mode == 'random':
          out[i] = self._random.integers(n)
        elif mode == 'seeded':
          out[i] = np.random.default_rng(
            [
              self.options.seed,
              _stable_int(key),
              face.track if face.track is not None else face.index,
            ]
          ).integers(n)
        else:
          out[i] = int(np.argmax(np.linalg.norm(bank.means - sources[i], axis=1)))
      except Exception as e:  # pylint: disable=broad-except
        face.fail('generation_error', f'choosing its target: {type(e).__name__}: {e}')
        continue
      if face.track is not None:
        self._track_targets[(key, face.track)] = int(out[i])
    return out

  def _generate(self, faces: list[Face], keys: list[str], images: list[np.ndarray]) -> None:
    """Each face's ``output``: the generator's (towards its target) or the baseline's."""
    targets = None
    if self.baseline is None and faces:
      try:
        targets = self._choose_targets(faces, keys, images)
      except Exception as e:  # pylint: disable=broad-except
        for face in faces:
          face.fail('generation_error', f'choosing targets: {type(e).__name__}: {e}')
        return
      chosen = targets >= 0
      faces = [f for f, ok in zip(faces, chosen) if ok]
      targets = targets[chosen]
    if not faces:
      return
    crops = np.stack([f.crop for f in faces])
    masks = np.stack([f.mask for f in faces])
    try:
      if self.baseline is not None:
        from sdgan_jax import baselines  # pylint: disable=import-outside-toplevel

        out = baselines.apply_baseline(
          BASELINES[self.baseline], crops.astype(np.float32) / 255.0, masks > 0
        )
      else:
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

  def _paste_faces(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
    """``image`` with every face still to anonymize pasted back (a failure: fallback)."""
    out = image.copy()
    for face in faces:
      if face.reason is None:
        try:
          out = self._paste(out, face)
        except Exception as e:  # pylint: disable=broad-except
          face.fail('paste_error', f'{type(e).__name__}: {e}')
    return out

  def _paste(self, out: np.ndarray, face: Face) -> np.ndarray:
    r = self.resolution
    inside = face.mask.reshape(r, r, 1) > 0
    # Outside the mask, take what is in the output *now* rather than the source crop, so
    # the feathered edge of one face never blends original pixels back into a neighbour
    # that was pasted before it.
    current = align.warp_affine(out, face.matrix, (r, r)) / 255.0
    crop = np.where(inside, face.output, current)
    return paste.paste_back(
      out, crop, face.matrix, face.mask, feather_px=max(1.0, self.options.feather * face.size)
    )

  def _check_identity(self, images, outputs, per_image) -> None:
    """Covers faces whose output is still the source person (package doc)."""
    if self.options.identity_threshold <= 0:
      return
    pending = [(i, f) for i, faces in enumerate(per_image) for f in faces if f.reason is None]
    if not pending:
      return
    faces = [f for _, f in pending]
    try:
      # Sources and outputs in one call: one compiled batch size, fewer padded rows.
      desc = self.identity.face_descriptors(
        [images[i] for i, _ in pending] + [outputs[i] for i, _ in pending], faces + faces
      )
    except Exception as e:  # pylint: disable=broad-except
      for face in faces:
        face.fail('identity_check_error', f'{type(e).__name__}: {e}')
      return
    threshold = self.options.identity_threshold
    for face, d in zip(faces, np.linalg.norm(desc[: len(faces)] - desc[len(faces) :], axis=1)):
      d = float(d)
      face.identity_distance = round(d, 4)
      if not np.isfinite(d) or d < threshold:
        face.fail('still_matches_source', f'descriptor distance {d:.3f} < {threshold:g}')

  def _cover_failed(
    self, image: np.ndarray, out: np.ndarray, faces: list[Face]
  ) -> tuple[np.ndarray, list[Face]]:
    """``out`` with the fallback over every face that failed, or came out unchanged."""
    regions = [pipeline.face_region(face) for face in faces]
    out = self._cover_checked(
      image,
      out,
      [(face, region) for face, region in zip(faces, regions) if face.reason is not None],
    )
    for face, region in zip(faces, regions):  # last line of defence
      x0, y0, x1, y1 = clip_box(region, out.shape)
      if x1 > x0 and y1 > y0 and np.array_equal(out[y0:y1, x0:x1], image[y0:y1, x0:x1]):
        face.fail('unchanged', 'the face region came out identical to the input')
        out = cover(out, region, dataclasses.replace(self.options, fallback='fill'))
        face.cover = 'fill'
    for face, region in zip(faces, regions):
      face.region = [round(float(v), 1) for v in region]
      face.release_pixels()
    self.faces_processed += len(faces)
    return out, faces

  def _cover_checked(self, image: np.ndarray, out: np.ndarray, failed: list) -> np.ndarray:
    """``out`` with the fallback over each (face, region) of ``failed``.

    A pixelated face can still be its source person (dlib matched a face pixelated at 100
    blocks): with the identity check on, every pixelated face with landmarks is checked
    like a generated one, and one that still matches is pixelated with half the blocks,
    down to 2, then filled; ``Face.cover`` says what was applied and ``detail`` why.
    """
    options = self.options
    for face, region in failed:
      out = cover(out, region, options)
      face.cover = 'fill' if options.fallback == 'fill' else f'pixelate{options.fallback_blocks}'
    if options.fallback == 'fill' or not options.identity_check or self.identity is None:
      return out
    todo = [(face, region) for face, region in failed if face.image_landmarks is not None]
    if not todo:
      return out
    blocks, threshold = options.fallback_blocks, options.identity_threshold
    sources = self._descriptors(image, [face for face, _ in todo])
    while todo:
      covered = self._descriptors(out, [face for face, _ in todo])
      # NaN (the backbone failed) counts as a match: fail closed.
      distances = np.linalg.norm(sources - covered, axis=1)
      still = [(f, r, d) for (f, r), d in zip(todo, distances) if not d >= threshold]
      if not still:
        break
      blocks //= 2
      coarser = (
        dataclasses.replace(options, fallback_blocks=blocks)
        if blocks >= 2
        else dataclasses.replace(options, fallback='fill')
      )
      for face, region, d in still:
        out = cover(out, region, coarser)
        note = f'the cover {face.cover} still matched the source (distance {d:.3f} < {threshold:g})'
        face.cover = f'pixelate{blocks}' if blocks >= 2 else 'fill'
        face.detail = f'{face.detail}; {note}' if face.detail else note
      if blocks < 2:
        break
      todo = [(f, r) for f, r, _ in still]
    return out

  def _descriptors(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
    """The identity descriptors of ``faces`` in ``image``; NaN rows when that fails."""
    try:
      return self.identity.face_descriptors([image] * len(faces), faces)
    except Exception:  # pylint: disable=broad-except
      return np.full((len(faces), 1), np.nan, np.float32)


def needs_identity(options: Options, generator) -> bool:
  """The identity check, or 'farthest' targets of a generator, need the backbone."""
  return options.identity_check or (generator is not None and options.target == 'farthest')
