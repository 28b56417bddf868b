"""A face-detection recall set built from the sample photos: canvases with ground truth.

A face the detector misses is written out untouched, so detector coverage is measured here
on photos built for it, not on the photo a default was tuned to. Each canvas holds several
faces cut from the sample photos (``sdgan_jax.datasets.samples``: real public-domain
portraits, fetched pinned) with a soft elliptical edge, each one

* scaled to a face width (jaw line, landmarks 0-16) from 20 px to the whole frame,
* rotated in the image plane (0, +-30, +-45 degrees),
* mirrored or not, and
* partly occluded or not (a band over the lower face, like a mask, or over one side),

on a plain (solid or gradient) or cluttered (a mosaic of scikit-image's texture and object
photos) background. The ground truth of a face is its 68 landmarks mapped into the canvas
(dlib's landmarks on the large frontal source photo), its axis-aligned box and its size
bucket. A detection *covers* a face when the face's five key points (eye centres, nose tip,
mouth corners) lie inside the detection box and the box is not absurdly larger than the
face (``sdgan_jax.evaluation.coverage``): that is what anonymizing the box needs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np

from sdgan_jax.evaluation.coverage import covers, false_box_mask
from sdgan_jax.faces import landmarks

# Face width buckets (px, [lo, hi)), reported separately: the small ones are where
# detectors fail, the last one is a face filling most of the frame.
SIZE_BUCKETS = ((20, 32), (32, 64), (64, 128), (128, 300), (300, 1000))
ANGLES = (0, -30, 30, -45, 45)
OCCLUSIONS = (None, 'lower', 'side')
BACKGROUNDS = ('plain', 'cluttered')
# Key points that a covering box must contain: eye centres, nose tip, mouth corners.
_EYES = (slice(36, 42), slice(42, 48))
_NOSE_TIP, _MOUTH = 30, (48, 54)
# The canvas patch around a face: its radius in face widths, and the width of its soft edge.
PATCH_RADIUS = 1.35
EDGE = 0.25
_TEXTURES = (
  'brick',
  'grass',
  'gravel',
  'coffee',
  'rocket',
  'chelsea',
  'coins',
  'hubble_deep_field',
  'immunohistochemistry',
  'retina',
  'page',
  'text',
  'colorwheel',
  'clock',
)


@dataclasses.dataclass(frozen=True)
class FaceSource:
  """A sample photo and dlib's 68 landmarks of its face."""

  name: str
  image: np.ndarray  # uint8 [H, W, 3]
  landmarks: np.ndarray  # float [68, 2]

  @property
  def width(self) -> float:
    return float(np.ptp(self.landmarks[:17, 0]))


@dataclasses.dataclass(frozen=True)
class FaceSpec:
  """How one face is drawn: source, width in px, rotation (degrees, counter-clockwise as
  seen), mirrored, occlusion (None, 'lower' or 'side')."""

  source: str
  size: float
  angle: float = 0.0
  mirror: bool = False
  occlusion: str | None = None

  @property
  def bucket(self) -> str:
    return size_bucket(self.size)


@dataclasses.dataclass(frozen=True)
class GroundTruthFace:
  """A face drawn on a canvas: its spec, 68 landmarks and box (x0, y0, x1, y1) in canvas
  pixels (x1, y1 exclusive), which of its five ``keypoints`` the occluder leaves visible,
  and the occluder's polygon (canvas pixels) or None."""

  spec: FaceSpec
  landmarks: np.ndarray
  box: np.ndarray
  visible: np.ndarray
  occluder: np.ndarray | None = None

  @property
  def size(self) -> float:
    """The face's width in canvas pixels (``coverage.covers``' slack is a share of it)."""
    return self.spec.size

  @property
  def keypoints(self) -> np.ndarray:
    """[5, 2]: the eye centres, the nose tip and the mouth corners."""
    pts = self.landmarks
    return np.stack(
      [pts[_EYES[0]].mean(0), pts[_EYES[1]].mean(0), pts[_NOSE_TIP], pts[_MOUTH[0]], pts[_MOUTH[1]]]
    )


@dataclasses.dataclass(frozen=True)
class Canvas:
  image: np.ndarray  # uint8 [H, W, 3]
  faces: tuple[GroundTruthFace, ...]
  background: str


def size_bucket(size: float) -> str:
  for lo, hi in SIZE_BUCKETS:
    if lo <= size < hi:
      return f'{lo}-{hi}px'
  raise ValueError(f'face width {size} px is outside the buckets {SIZE_BUCKETS}')


def face_sources(photos: dict[str, np.ndarray]) -> dict[str, FaceSource]:
  """The sample photos with dlib's landmarks of their faces (``samples.photo_landmarks``)."""
  from sdgan_jax.datasets import samples  # pylint: disable=import-outside-toplevel

  return {
    name: FaceSource(name, image, samples.photo_landmarks(image)) for name, image in photos.items()
  }


# --- drawing ------------------------------------------------------------------------------


def _face_transform(source: FaceSource, spec: FaceSpec, centre) -> np.ndarray:
  """[2, 3] source -> canvas similarity: the face centre to ``centre``, scaled and rotated."""
  scale = spec.size / source.width
  theta = math.radians(spec.angle)
  # Image y points down: a counter-clockwise turn as seen is a negative angle in (x, y).
  rot = scale * np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
  flip = np.diag([-1.0, 1.0]) if spec.mirror else np.eye(2)
  linear = rot @ flip
  origin = source.landmarks.mean(0)
  return np.concatenate([linear, (np.asarray(centre) - linear @ origin)[:, None]], axis=1)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
  return points @ matrix[:, :2].T + matrix[:, 2]


def _warp(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """``image`` mapped by ``matrix`` (source -> destination) onto a ``size`` (w, h) raster."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  inv = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
  # Downscaling by more than ~2x with one bilinear tap aliases; shrink the source first.
  scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
  pil = Image.fromarray(image)
  if scale < 0.5:
    factor = int(1 / scale / 1.5) or 1
    pil = pil.reduce(factor)
    inv = np.diag([1.0 / factor, 1.0 / factor]) @ inv
  return np.asarray(pil.transform(size, Image.AFFINE, tuple(inv.ravel()), Image.BILINEAR))


def _background(kind: str, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
  w, h = size
  if kind == 'plain':
    top, bottom = rng.integers(30, 226, 3), rng.integers(30, 226, 3)
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    if rng.random() < 0.5:
      t = np.zeros_like(t)
    return np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).astype(np.uint8).copy()
  if kind != 'cluttered':
    raise ValueError(f'background must be one of {BACKGROUNDS}, got {kind!r}')
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from skimage import data  # pylint: disable=import-outside-toplevel

  canvas = np.zeros((h, w, 3), np.uint8)
  cell = max(64, min(w, h) // 4)
  for y in range(0, h, cell):
    for x in range(0, w, cell):
      tex = np.asarray(getattr(data, _TEXTURES[rng.integers(len(_TEXTURES))])())
      if tex.ndim == 2:  # grayscale textures get a random tint
        tex = (tex[..., None].astype(np.float32) * (0.4 + 0.6 * rng.random(3))).astype(np.uint8)
      tex = tex[..., :3]
      size_px = int(cell * rng.uniform(1.0, 1.6))
      tile = np.asarray(Image.fromarray(tex).resize((size_px, size_px), Image.BILINEAR))
      canvas[y : y + cell, x : x + cell] = tile[: min(cell, h - y), : min(cell, w - x)]
  return canvas


def _occluder(face_points: np.ndarray, kind: str) -> np.ndarray:
  """Polygon [4, 2] (canvas px) over the lower face ('lower') or one side ('side')."""
  left, right = face_points[0], face_points[16]  # jaw ends, at eye height
  chin, nose = face_points[8], face_points[33]
  across = right - left
  down = chin - (left + right) / 2
  if kind == 'lower':  # from just under the nose to below the chin, jaw to jaw
    top = nose + 0.1 * down
    return np.array(
      [
        top - 0.6 * across,
        top + 0.6 * across,
        chin + 0.15 * down + 0.6 * across,
        chin + 0.15 * down - 0.6 * across,
      ]
    )
  if kind == 'side':  # the outer 40% of the face on the right of the image
    mid = (left + right) / 2
    up = -0.9 * down
    a = mid + 0.1 * across
    return np.array(
      [a + up, right + 0.2 * across + up, right + 0.2 * across + 1.2 * down, a + 1.2 * down]
    )
  raise ValueError(f'occlusion must be one of {OCCLUSIONS}, got {kind!r}')


def _inside_convex(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
  """Which ``points`` [N, 2] lie inside the convex ``polygon`` [K, 2] (either winding)."""
  edges = np.roll(polygon, -1, axis=0) - polygon
  rel = points[:, None, :] - polygon[None, :, :]
  cross = edges[None, :, 0] * rel[..., 1] - edges[None, :, 1] * rel[..., 0]
  return (cross >= 0).all(1) | (cross <= 0).all(1)


def draw_face(
  canvas: np.ndarray, source: FaceSource, spec: FaceSpec, centre, rng: np.random.Generator
) -> GroundTruthFace:
  """Composites one face onto ``canvas`` (in place) and returns its ground truth."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel

  h, w = canvas.shape[:2]
  matrix = _face_transform(source, spec, centre)
  image = source.image  # the matrix mirrors the pixels and the landmarks alike
  radius = PATCH_RADIUS * spec.size
  x0 = int(max(0, math.floor(centre[0] - radius * 1.3)))
  y0 = int(max(0, math.floor(centre[1] - radius * 1.3)))
  x1 = int(min(w, math.ceil(centre[0] + radius * 1.3)))
  y1 = int(min(h, math.ceil(centre[1] + radius * 1.3)))
  local = matrix.copy()
  local[:, 2] -= (x0, y0)
  patch = _warp(image, local, (x1 - x0, y1 - y0)).astype(np.float32)
  # Soft ellipse around the head: taller than wide (hair, neck), turned with the face.
  yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
  theta = math.radians(spec.angle)
  dx, dy = xx - centre[0], yy - centre[1]
  u = dx * math.cos(theta) - dy * math.sin(theta)
  v = dx * math.sin(theta) + dy * math.cos(theta)
  r = np.sqrt((u / (0.95 * radius)) ** 2 + (v / (1.2 * radius)) ** 2)
  alpha = np.clip((1.0 - r) / (EDGE * spec.size / radius), 0.0, 1.0)[..., None]
  region = canvas[y0:y1, x0:x1].astype(np.float32)
  canvas[y0:y1, x0:x1] = np.round(region * (1 - alpha) + patch * alpha).astype(np.uint8)
  points = _apply(matrix, source.landmarks).astype(np.float32)
  if spec.mirror:  # keep the landmark scheme's meaning: index 36 stays the image-left eye
    points = points[landmarks.MIRROR]
  box = np.array(
    [points[:, 0].min(), points[:, 1].min(), points[:, 0].max() + 1, points[:, 1].max() + 1],
    np.float32,
  )
  face = GroundTruthFace(spec, points, box, np.ones(5, bool))
  if spec.occlusion:
    polygon = _occluder(points, spec.occlusion)
    pil = Image.fromarray(canvas)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    ImageDraw.Draw(pil).polygon([tuple(p) for p in polygon], fill=colour)
    canvas[:] = np.asarray(pil)
    face = dataclasses.replace(
      face, visible=~_inside_convex(face.keypoints, polygon), occluder=polygon.astype(np.float32)
    )
  return face


def render_canvas(
  sources: dict[str, FaceSource],
  specs: Sequence[FaceSpec],
  size: tuple[int, int],
  background: str,
  seed: int,
) -> tuple[Canvas, list[FaceSpec]]:
  """Draws as many of ``specs`` as fit without overlapping (largest first).

  Returns the canvas and the specs that did not fit.
  """
  rng = np.random.default_rng(seed)
  w, h = size
  canvas = _background(background, size, rng)
  placed: list[tuple[np.ndarray, float]] = []
  faces, left = [], []
  for spec in sorted(specs, key=lambda s: -s.size):
    # The whole face (not the whole patch) must be in the frame; patches may not overlap.
    keep_in = 0.75 * spec.size
    spread = 1.2 * PATCH_RADIUS * spec.size  # the patch's longer half-axis
    centre = None
    for _ in range(200):
      c = np.array([rng.uniform(keep_in, w - keep_in), rng.uniform(keep_in, h - keep_in)])
      if keep_in * 2 > min(w, h):
        break
      if all(np.linalg.norm(c - p) > spread + q for p, q in placed):
        centre = c
        break
    if centre is None:
      left.append(spec)
      continue
    placed.append((centre, spread))
    faces.append(draw_face(canvas, sources[spec.source], spec, centre, rng))
  return Canvas(canvas, tuple(faces), background), left


def face_specs(
  sources: Iterable[str],
  count: int,
  seed: int = 0,
  buckets: Sequence[tuple[int, int]] = SIZE_BUCKETS[:4],
) -> list[FaceSpec]:
  """``count`` faces cycling through every size bucket, angle, mirroring and occlusion.

  The conditions vary at different rates (size fastest, then angle, then mirroring, then
  occlusion), so any run of ``len(buckets) * len(ANGLES) * 2 * len(OCCLUSIONS)`` faces
  covers all combinations; the width within a bucket is log-uniform.
  """
  rng = np.random.default_rng(seed)
  sources = list(sources)
  specs = []
  nb, na = len(buckets), len(ANGLES)
  for i in range(count):
    lo, hi = buckets[i % nb]
    specs.append(
      FaceSpec(
        source=sources[i % len(sources)],
        size=float(math.exp(rng.uniform(math.log(lo), math.log(hi - 1)))),
        angle=float(ANGLES[(i // nb) % na]),
        mirror=bool((i // (nb * na)) % 2),
        occlusion=OCCLUSIONS[(i // (nb * na * 2)) % len(OCCLUSIONS)],
      )
    )
  return specs


def build_recall_set(
  sources: dict[str, FaceSource],
  num_faces: int = 120,
  size: tuple[int, int] = (1920, 1080),
  seed: int = 0,
  close_ups: int = 2,
) -> list[Canvas]:
  """Canvases holding ``num_faces`` faces of ``face_specs`` (backgrounds alternate), plus
  ``close_ups`` canvases with one face of 300 px or more (the whole-frame bucket)."""
  pending = face_specs(sources, num_faces, seed)
  canvases = []
  k = 0
  while pending:
    canvas, pending = render_canvas(sources, pending, size, BACKGROUNDS[k % 2], seed + k)
    if not canvas.faces:
      raise ValueError(f'faces of {[s.size for s in pending[:3]]} px do not fit a {size} canvas')
    canvases.append(canvas)
    k += 1
  names = list(sources)
  lo, hi = SIZE_BUCKETS[-1]
  for j in range(close_ups):
    width = min(hi - 1, 0.6 * min(size))
    spec = FaceSpec(
      names[j % len(names)], size=max(lo, width), angle=ANGLES[j % len(ANGLES)], mirror=bool(j % 2)
    )
    canvas, missed = render_canvas(sources, [spec], size, BACKGROUNDS[j % 2], seed + 1000 + j)
    if missed:
      raise ValueError(f'a close-up of {spec.size:.0f} px does not fit a {size} canvas')
    canvases.append(canvas)
  return canvases


# --- scoring ------------------------------------------------------------------------------


def found_faces(canvas: Canvas, boxes: np.ndarray) -> list[bool]:
  """Per ground-truth face of ``canvas``: is it covered by one of ``boxes`` [N, 4]?"""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  return [any(covers(b, face) for b in boxes) for face in canvas.faces]


def false_boxes(canvas: Canvas, boxes: np.ndarray) -> int:
  """Detections that cover no ground-truth face and overlap none of their boxes."""
  return int(false_box_mask(boxes, canvas.faces).sum())


def recall_table(canvases: Sequence[Canvas], found: Sequence[Sequence[bool]]) -> dict:
  """Recall overall and per size bucket, angle, occlusion, mirroring and background."""
  rows: dict[str, list[bool]] = {}
  for canvas, hits in zip(canvases, found):
    for face, hit in zip(canvas.faces, hits):
      s = face.spec
      for key in (
        'all',
        f'size {s.bucket}',
        f'angle {s.angle:+.0f}',
        f'occlusion {s.occlusion or "none"}',
        f'mirrored {s.mirror}',
        f'background {canvas.background}',
      ):
        rows.setdefault(key, []).append(bool(hit))
  return {
    key: {'faces': len(v), 'found': int(sum(v)), 'recall': round(sum(v) / len(v), 4)}
    for key, v in rows.items()
  }


def visible_face_mask(face: GroundTruthFace, shape: tuple[int, int]) -> np.ndarray:
  """bool [H, W]: the face's pixels that can identify it: inside the convex hull of its 68
  landmarks and outside its occluder."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  from scipy.spatial import ConvexHull  # pylint: disable=import-outside-toplevel

  h, w = shape
  pil = Image.new('L', (w, h), 0)
  draw = ImageDraw.Draw(pil)
  hull = face.landmarks[ConvexHull(face.landmarks).vertices]
  draw.polygon([tuple(p) for p in hull], fill=255)
  if face.occluder is not None:
    draw.polygon([tuple(p) for p in face.occluder], fill=0)
  return np.asarray(pil) > 0


def evaluate(detect_fn, canvases: Sequence[Canvas], warmup: bool = True) -> dict:
  """Recall table, false boxes and seconds per canvas of ``detect_fn(image) -> Detections``
  (``detect.Detections``' inclusive boxes) over ``canvases``; one untimed call first
  (compilation, model loading) when ``warmup``."""
  import time  # pylint: disable=import-outside-toplevel

  if warmup and canvases:
    detect_fn(canvases[0].image)
  found, false, start = [], 0, time.perf_counter()
  for canvas in canvases:
    boxes = np.asarray(detect_fn(canvas.image).boxes, np.float64).reshape(-1, 4) + [0, 0, 1, 1]
    found.append(found_faces(canvas, boxes))
    false += false_boxes(canvas, boxes)
  seconds = (time.perf_counter() - start) / max(len(canvases), 1)
  missed = [
    dataclasses.asdict(face.spec)
    for canvas, hits in zip(canvases, found)
    for face, hit in zip(canvas.faces, hits)
    if not hit
  ]
  return {
    'recall': recall_table(canvases, found),
    'false_boxes': false,
    'seconds_per_image': round(seconds, 3),
    'missed': missed,
  }


def crowd_canvas(
  sources: dict[str, FaceSource],
  size: tuple[int, int] = (6000, 4000),
  num_faces: int = 150,
  seed: int = 0,
) -> Canvas:
  """A large photo of a crowd: ``num_faces`` small faces (20-64 px, all poses) on one
  cluttered canvas, for timing and recall at sizes a phone camera takes."""
  specs = face_specs(sources, num_faces, seed, buckets=SIZE_BUCKETS[:2])
  canvas, _ = render_canvas(sources, specs, size, 'cluttered', seed)
  return canvas


def anonymizer_outcomes(
  anonymizer, items: Sequence[tuple[np.ndarray, Sequence, Sequence]], min_px: float = 40.0
) -> dict:
  """How ``anonymizer`` (a ``FaceAnonymizer``) treats the ground-truth faces of ``min_px``
  and more in ``items`` [(uint8 image, faces, ignore regions)]: per face, 'anonymized' when a face
  it
  prepared covers it, else the fallback reason of the faces that cover it ('missed' for
  none); and how many prepared faces cover no ground-truth face ('on_no_face': a generated
  face or a pixel block where no face is)."""
  outcomes: dict[str, int] = {}
  on_no_face = {'anonymized': 0, 'fallback': 0}
  for image, faces, ignore in items:
    [(_, prepared)] = anonymizer.process([image])
    boxes = [np.asarray(f.box, np.float64) + [0, 0, 1, 1] for f in prepared]
    for face in faces:
      if face.size < min_px:
        continue
      hits = [f for f, b in zip(prepared, boxes) if covers(b, face)]
      status = (
        'anonymized'
        if any(f.status == 'anonymized' for f in hits)
        else hits[0].reason
        if hits
        else 'missed'
      )
      outcomes[status] = outcomes.get(status, 0) + 1
    if len(boxes):
      false = false_box_mask(np.stack(boxes), faces, ignore)
      for f, is_false in zip(prepared, false):
        if is_false:
          on_no_face[f.status] += 1
  return {'faces': sum(outcomes.values()), 'outcomes': outcomes, 'on_no_face': on_no_face}
