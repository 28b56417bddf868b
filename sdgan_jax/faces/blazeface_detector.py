"""BlazeFace detection on photos of any size: tiles, a scale pyramid, decoding and NMS.

The networks (``sdgan_jax.models.blazeface``) see a fixed square input and find faces
whose width is a certain share of it (``BlazeFaceConfig.face_range``, measured on the
recall set, ``docs/detection.md``). A photo of any size is therefore cut into a *pyramid of
tiles*: level 0 shrinks the photo so that the smallest face wanted (``min_face_px``) has the
smallest width the network finds; each further level shrinks it ``level_ratio`` times more;
the last ones hold the whole photo in one tile. Within a level the tiles overlap by more
than the largest face that level answers for, and each tile keeps only the detections
centred in its own *core* (the overlaps split half and half), so a face is found whole in
exactly one tile. All tiles of all images go through the network in fixed-size batches
(one compiled program, on the accelerator when there is one); decoding and non-maximum
suppression run on the host.

Decoding (MediaPipe's ``TensorsToDetectionsCalculator`` with the models' options): anchors
are the cell centres of each output grid, of fixed unit size; a regressor row is
``(dx, dy, w, h, kx0, ky0, ..., kx5, ky5)`` in input pixels relative to its anchor; the
score is ``sigmoid(clip(logit, -100, 100))``. The six keypoints are, in this order, the
right eye, left eye, nose tip, mouth centre, right ear and left ear (the subject's right:
on the left of the image for a frontal face).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
from collections.abc import Sequence

import numpy as np

from sdgan_jax import batching
from sdgan_jax.faces import detect

NUM_KEYPOINTS = 6
# Candidate boxes over the threshold one photo may give one detector. A real face scores
# over a few anchors of a few tiles (tens of candidates): 10,000 are hundreds of faces,
# while zeroed weights score every anchor of every tile 0.5 (hundreds of thousands), whose
# suppression once grew a process to 24 GB. More is ``DetectorOverflowError``.
MAX_CANDIDATES = 10_000
RIGHT_EYE, LEFT_EYE, NOSE_TIP, MOUTH, RIGHT_EAR, LEFT_EAR = range(NUM_KEYPOINTS)


@dataclasses.dataclass(frozen=True)
class BlazeFaceConfig:
  """What a model needs at run time besides its weights.

  Attributes:
    name: weights name (``sdgan_jax.weights``) and ``models.blazeface.MODELS`` key.
    threshold: default score threshold.
    face_range: (smallest, largest) face width (jaw to jaw), in network input pixels, that
      the network finds reliably, upright and turned up to 45 degrees, on the recall set
      (``docs/detection.md``).
    tile_size: default tile side; the short-range network works on larger inputs as well as
      on its own 128 (fewer, bigger tiles overlap less), the full-range one does not.
  """

  name: str
  threshold: float
  face_range: tuple[float, float]
  tile_size: int


CONFIGS = {
  'blazeface_short_range': BlazeFaceConfig('blazeface_short_range', 0.6, (18.0, 112.0), 256),
  'blazeface_full_range': BlazeFaceConfig('blazeface_full_range', 0.5, (20.0, 96.0), 192),
}


def anchor_centres(input_size: int, strides: Sequence[int], interpolated: bool) -> np.ndarray:
  """[A, 2] anchor centres (x, y) in input pixels, in the networks' output order.

  Consecutive layers of one stride share a grid (MediaPipe's SSD anchor rule); each layer
  has one anchor per cell, two with the interpolated aspect ratio.
  """
  out = []
  i = 0
  while i < len(strides):
    stride, per_cell = strides[i], 0
    while i < len(strides) and strides[i] == stride:
      per_cell += 2 if interpolated else 1
      i += 1
    cells = math.ceil(input_size / stride)
    centre = (np.arange(cells) + 0.5) * (input_size / cells)
    yy, xx = np.meshgrid(centre, centre, indexing='ij')
    grid = np.stack([xx, yy], -1).reshape(-1, 1, 2)
    out.append(np.repeat(grid, per_cell, axis=1).reshape(-1, 2))
  return np.concatenate(out).astype(np.float32)


class DetectorOverflowError(RuntimeError):
  """A detector scored more candidate boxes over its threshold than a photo can hold faces:
  broken (e.g. zeroed) weights, or a threshold near 0. Raised before the non-maximum
  suppression, whose time grows with the square of the candidates."""


def decode(
  regressors: np.ndarray, logits: np.ndarray, anchors: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One input's raw outputs -> (boxes [N, 4] x0 y0 x1 y1, scores [N], keypoints [N, 6, 2])
  in input pixels, for the anchors scoring at least ``threshold``."""
  clipped = np.clip(logits.astype(np.float64), -100.0, 100.0)
  scores = (1.0 / (1.0 + np.exp(-clipped))).astype(np.float32)
  keep = np.nonzero(scores >= threshold)[0]
  r, a = regressors[keep], anchors[keep]
  cx, cy = a[:, 0] + r[:, 0], a[:, 1] + r[:, 1]
  w, h = r[:, 2], r[:, 3]
  boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
  keypoints = r[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) + a[:, None, :]
  return boxes, scores[keep], keypoints


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """[len(a), len(b)] intersection over union of (x0, y0, x1, y1) boxes (x1, y1 exclusive)."""
  a = np.asarray(a, np.float64).reshape(-1, 4)
  b = np.asarray(b, np.float64).reshape(-1, 4)
  w = np.clip(
    np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
  )
  h = np.clip(
    np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None
  )
  area = lambda c: (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])  # noqa: E731
  inter = w * h
  return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def weighted_nms(
  boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray, iou: float = 0.3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """MediaPipe's weighted non-maximum suppression: the best-scoring box absorbs the boxes
  overlapping it by ``iou`` or more, and becomes their score-weighted average."""
  order = np.argsort(-scores, kind='stable')
  boxes, scores, keypoints = boxes[order], scores[order], keypoints[order]
  left = np.ones(len(scores), bool)
  out_b, out_s, out_k = [], [], []
  for i in range(len(scores)):
    if not left[i]:
      continue
    # One row of overlaps at a time: memory linear in the candidates, not quadratic.
    group = left & (iou_matrix(boxes[i], boxes)[0] >= iou)
    left &= ~group
    weight = scores[group] / scores[group].sum()
    out_b.append((boxes[group] * weight[:, None]).sum(0))
    out_k.append((keypoints[group] * weight[:, None, None]).sum(0))
    out_s.append(scores[i])
  if not out_s:
    return (
      np.zeros((0, 4), np.float32),
      np.zeros(0, np.float32),
      np.zeros((0, NUM_KEYPOINTS, 2), np.float32),
    )
  return (
    np.asarray(out_b, np.float32),
    np.asarray(out_s, np.float32),
    np.asarray(out_k, np.float32),
  )


# --- the tile pyramid -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tile:
  """A ``size`` x ``size`` window of the photo scaled by ``scale`` (per axis), at (x0, y0)
  of the scaled photo; detections centred outside ``core`` (scaled-photo pixels, x0 y0 x1
  y1) belong to a neighbouring tile."""

  level: int
  scale: tuple[float, float]
  x0: int
  y0: int
  core: tuple[float, float, float, float]


def _axis_tiles(length: int, tile: int, overlap: int) -> list[tuple[int, float, float]]:
  """Tile origins along one axis and the core interval each owns."""
  if length <= tile:
    return [(0, -math.inf, math.inf)]
  count = math.ceil((length - overlap) / (tile - overlap))
  step = (length - tile) / (count - 1)
  starts = [int(round(k * step)) for k in range(count)]
  cores = []
  for k, s in enumerate(starts):
    lo = -math.inf if k == 0 else (starts[k - 1] + tile + s) / 2
    hi = math.inf if k == count - 1 else (s + tile + starts[k + 1]) / 2
    cores.append((s, lo, hi))
  return cores


def plan_tiles(
  height: int,
  width: int,
  tile: int,
  face_range: tuple[float, float],
  min_face_px: float,
  level_ratio: float = 2.0,
) -> list[Tile]:
  """The pyramid of tiles that finds faces from ``min_face_px`` wide to the whole photo.

  Level k scales the photo by ``s_k = lo / min_face_px / level_ratio**k`` and so answers
  for faces ``lo / s_k`` to ``hi / s_k`` wide (``face_range = (lo, hi)``, in network
  pixels); the levels go on until one answers for faces as wide as the photo. Within a
  level, tiles overlap by the widest face the level alone answers for (``lo *
  level_ratio``), with a quarter more for context.
  """
  lo, hi = face_range
  if not 1.0 < level_ratio <= hi / lo:
    raise ValueError(f'level_ratio must be in (1, {hi / lo:g}], got {level_ratio}')
  scales = [lo / max(min_face_px, 1.0)]
  while hi / scales[-1] < max(height, width):
    scales.append(scales[-1] / level_ratio)
  overlap = min(tile // 2, int(math.ceil(lo * level_ratio * 1.25)))
  tiles = []
  for level, s in enumerate(scales):
    # Rounded up, so that no face is seen below the smallest width the network finds.
    sw, sh = max(1, math.ceil(width * s - 1e-9)), max(1, math.ceil(height * s - 1e-9))
    for y0, ylo, yhi in _axis_tiles(sh, tile, overlap):
      for x0, xlo, xhi in _axis_tiles(sw, tile, overlap):
        tiles.append(Tile(level, (sw / width, sh / height), x0, y0, (xlo, ylo, xhi, yhi)))
  return tiles


def _cut(scaled: np.ndarray, x0: int, y0: int, tile: int) -> np.ndarray:
  """``tile`` x ``tile`` window of ``scaled`` at (x0, y0), zero (black) beyond its edges."""
  out = np.zeros((tile, tile, 3), np.uint8)
  part = scaled[y0 : y0 + tile, x0 : x0 + tile]
  out[: part.shape[0], : part.shape[1]] = part
  return out


MAX_THREADS = 4


@functools.cache
def _pool(threads: int) -> concurrent.futures.ThreadPoolExecutor:
  return concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix='blazeface')


@functools.cache
def _jitted_apply(name: str):
  from sdgan_jax.models import blazeface  # pylint: disable=import-outside-toplevel
  from sdgan_jax.perf import xla_options  # pylint: disable=import-outside-toplevel

  model = blazeface.MODELS[name]()

  def apply(variables, tiles):
    return model.apply(variables, tiles.astype('float32') / 255.0)

  # on CPUs without YNNPACK, which ran both networks slower (docs/detection.md)
  return xla_options.jit_network(apply, cpu_options=xla_options.CPU_NO_YNNPACK)


class BlazeFaceDetector:
  """``BlazeFaceDetector()(image) -> detect.Detections`` (with keypoints) for any photo size.

  Args:
    name: 'blazeface_full_range' (default; faces down to ``min_face_px`` through the
      pyramid) or 'blazeface_short_range'.
    threshold: minimum score (default: the config's, below MediaPipe's, for recall).
    min_face_px: smallest face width to find; the pyramid's finest level is set by it.
    level_ratio: scale between pyramid levels.
    batch_size: tiles per network call (one compiled shape; default 8 on CPU, where
      padding a partly filled batch costs time, 64 on accelerators).
    nms_iou: overlap above which two detections are one face.
    tile_size: tile side (default: the config's).
    variables, weights_dir: the converted weights (default: loaded by ``name``).
  """

  def __init__(
    self,
    name: str = 'blazeface_full_range',
    threshold: float | None = None,
    min_face_px: float = 20.0,
    level_ratio: float = 2.0,
    batch_size: int | None = None,
    nms_iou: float = 0.3,
    tile_size: int | None = None,
    variables=None,
    weights_dir: str | os.PathLike | None = None,
  ):
    from sdgan_jax.models import blazeface  # pylint: disable=import-outside-toplevel

    if name not in CONFIGS:
      raise ValueError(f'unknown BlazeFace model {name!r}; choose from {sorted(CONFIGS)}')
    if min_face_px <= 0:
      raise ValueError(f'min_face_px must be > 0, got {min_face_px}')
    import jax  # pylint: disable=import-outside-toplevel

    on_cpu = jax.default_backend() == 'cpu'
    batch_size = batch_size or (8 if on_cpu else 64)
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    self.threads = min(os.cpu_count() or 1, MAX_THREADS) if on_cpu else 1
    self.config = CONFIGS[name]
    self.name = name
    self.threshold = self.config.threshold if threshold is None else float(threshold)
    self.min_face_px = float(min_face_px)
    self.level_ratio = float(level_ratio)
    self.batch_size = int(batch_size)
    self.nms_iou = float(nms_iou)
    model_cls = blazeface.MODELS[name]
    self.tile = int(tile_size or self.config.tile_size)
    if self.tile % model_cls.size_multiple or self.tile < model_cls.input_size:
      raise ValueError(
        f'tile_size of {name} must be a multiple of {model_cls.size_multiple} '
        f'and at least {model_cls.input_size}, got {self.tile}'
      )
    self.anchors = anchor_centres(
      self.tile, model_cls.anchor_strides, model_cls.interpolated_anchor
    )
    if variables is None:
      from sdgan_jax import weights  # pylint: disable=import-outside-toplevel

      variables = weights.load_weights(name, weights_dir)
    self.variables = variables
    from sdgan_jax import cpu_export  # pylint: disable=import-outside-toplevel

    self._apply = cpu_export.network(name, 'detector', _jitted_apply(name))

  def __call__(self, image) -> detect.Detections:
    return self.detect_many([image])[0]

  def raw(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The network's (regressors, logits) for uint8 tiles [N, S, S, 3], in padded batches.

    On a CPU the batches run in ``threads`` parallel threads, which keep the cores busy
    between XLA's own parallel loops (measured in docs/detection.md); on an accelerator
    they run in order. ``batching.map_batches`` runs them in order only, so the threads
    pad their batches themselves.
    """
    b = self.batch_size
    chunks = [tiles[lo : lo + b] for lo in range(0, len(tiles), b)]

    def run(chunk):
      r, s = self._apply(self.variables, batching.pad_rows(chunk, b))
      return np.asarray(r)[: len(chunk)], np.asarray(s)[: len(chunk)]

    if not chunks:
      return (
        np.zeros((0, len(self.anchors), 16), np.float32),
        np.zeros((0, len(self.anchors)), np.float32),
      )
    if self.threads > 1 and len(chunks) > 1:
      outs = list(_pool(self.threads).map(run, chunks))
    else:
      outs = [run(c) for c in chunks]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

  def detect_many(self, images: Sequence[np.ndarray]) -> list[detect.Detections]:
    """Detections of several photos, their tiles batched together."""
    images = [detect.check_image(im) for im in images]
    plans, tiles = [], []
    for image in images:
      plan, cut = self._tiles(image)
      plans.append(plan)
      tiles += cut
    shape = (0, self.tile, self.tile, 3)
    regs, logits = self.raw(np.stack(tiles) if tiles else np.zeros(shape, np.uint8))
    out, k = [], 0
    for plan in plans:
      found = [
        self._keep_own(t, *decode(regs[k + i], logits[k + i], self.anchors, self.threshold))
        for i, t in enumerate(plan)
      ]
      k += len(plan)
      count = sum(len(scores) for _, scores, _ in found)
      if count > MAX_CANDIDATES:
        raise DetectorOverflowError(
          f'{self.name} scored {count} candidate boxes over its threshold '
          f'{self.threshold:g} in one photo (at most {MAX_CANDIDATES}): its weights look '
          'broken (convert them again with `make weights`) or its threshold is far too '
          'low; the photo is not written'
        )
      b, s, p = weighted_nms(*(np.concatenate(parts) for parts in zip(*found)), iou=self.nms_iou)
      out.append(
        detect.Detections(
          boxes=_to_inclusive(b), scores=s, keypoints=p, sources=(self.name,) * len(s)
        )
      )
    return out

  def _tiles(self, image: np.ndarray) -> tuple[list[Tile], list[np.ndarray]]:
    """The photo's tile pyramid and the tiles' pixels (each level resized once)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    h, w = image.shape[:2]
    plan = plan_tiles(h, w, self.tile, self.config.face_range, self.min_face_px, self.level_ratio)
    pil = Image.fromarray(image)
    levels: dict[int, np.ndarray] = {}
    tiles = []
    for t in plan:
      if t.level not in levels:
        size = (round(w * t.scale[0]), round(h * t.scale[1]))
        levels[t.level] = image if size == (w, h) else np.asarray(pil.resize(size, Image.BILINEAR))
      tiles.append(_cut(levels[t.level], t.x0, t.y0, self.tile))
    return plan, tiles

  def _keep_own(self, t: Tile, boxes, scores, points):
    """This tile's detections (centre in its core), mapped to photo pixels."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 + t.x0
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 + t.y0
    x0, y0, x1, y1 = t.core
    keep = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
    sx, sy = t.scale
    offset = np.array([t.x0, t.y0], np.float32)
    boxes = (boxes[keep].reshape(-1, 2, 2) + offset) / np.array([sx, sy], np.float32)
    points = (points[keep] + offset) / np.array([sx, sy], np.float32)
    return boxes.reshape(-1, 4), scores[keep], points


def _to_inclusive(boxes: np.ndarray) -> np.ndarray:
  """(x0, y0, x1, y1) with exclusive ends -> ``detect.Detections``' inclusive convention."""
  out = np.asarray(boxes, np.float32).copy().reshape(-1, 4)
  out[:, 2:] -= 1.0
  return out
