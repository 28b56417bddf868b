"""Face-parsing datasets from a local folder, mapped onto our 11 classes (paper §3.2).

SDGAN §3.2 takes its semantic maps from EAGRNet, a parser trained on a face-parsing dataset.
Two public layouts are read here, unchanged from how they unpack:

CelebAMask-HQ (Lee et al. 2020): ``<root>/CelebA-HQ-img/<idx>.jpg`` (1024 px) and per-part
binary masks ``<root>/CelebAMask-HQ-mask-anno/<k>/<idx:05d>_<part>.png`` (512 px, white =
part; folder ``k`` holds 2000 indices, but any sub-folder is accepted). A part without a
file is absent from that image. The 18 parts map onto ``features.SEMANTIC_CLASSES`` by
``CELEBAMASK_HQ_CLASSES``, painted in ``CELEBAMASK_HQ_ORDER`` (later parts win where the
hand-drawn masks overlap). Choices where the datasets disagree, ours:

  eye_g (eyeglasses)  -> skin: the frames lie on the face; the eyes, painted later, stay eyes
  l_ear, r_ear, ear_r (earring), neck, neck_l (necklace), cloth -> background: our classes
                         describe the face, as Helen's do; the landmark-polygon maps also
                         leave ears and neck as background
  hat                 -> background (painted last: a hat hides the hair under it)
  mouth               -> inner_mouth; u_lip / l_lip -> upper_lip / lower_lip
  hair                -> hair, painted after the face parts (a fringe covers the brows)

CelebAMask-HQ has no split in its folder: ``split='train'`` is every index but the last
``holdout``, ``split='val'`` the last ``holdout`` (sorted by index).

LaPa (Liu et al. 2020): ``<root>/<split>/images/<name>.jpg`` and
``<root>/<split>/labels/<name>.png``, splits 'train', 'val', 'test'. The label PNG holds one
id per pixel, 0 background, 1 skin, 2 left eyebrow, 3 right eyebrow, 4 left eye, 5 right
eye, 6 nose, 7 upper lip, 8 inner mouth, 9 lower lip, 10 hair: the same 11 classes in the
same order as ours (``LAPA_CLASSES`` is the identity).

Left and right: our classes name *image* left/right (``sdgan_jax.faces.masks``), which is
what the flip augmentation swaps. Which side a dataset's "left" means is not something this
code should trust, so with ``sides='position'`` (default) each image's brow and eye pairs
are re-assigned by position: of a pair whose two parts are both present, the one whose
centroid lies further left in the image becomes ``left_*``. A part present alone keeps the
name the dataset gave it. ``sides='as_labelled'`` keeps the dataset's names throughout.

Framing: the images are centre-cropped to a square (shorter side) and resized to the
training resolution (bilinear with antialiasing for images, nearest for labels). These
images frame the whole head more loosely than our eye-aligned crops; the parser sees both
framings if it is fine-tuned on prepared data afterwards.

No TensorFlow: images are decoded with PIL; ``parsing_batches`` turns a folder into the
training and evaluation batches.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Mapping

import numpy as np

from sdgan_jax.datasets.features import NUM_CLASSES, SEMANTIC_CLASSES

LAYOUTS = ('celebamask_hq', 'lapa')
_ID = {name: i for i, name in enumerate(SEMANTIC_CLASSES)}

CELEBAMASK_HQ_CLASSES = {
  'skin': _ID['skin'],
  'eye_g': _ID['skin'],
  'nose': _ID['nose'],
  'l_brow': _ID['left_brow'],
  'r_brow': _ID['right_brow'],
  'l_eye': _ID['left_eye'],
  'r_eye': _ID['right_eye'],
  'u_lip': _ID['upper_lip'],
  'mouth': _ID['inner_mouth'],
  'l_lip': _ID['lower_lip'],
  'hair': _ID['hair'],
  'l_ear': _ID['background'],
  'r_ear': _ID['background'],
  'ear_r': _ID['background'],
  'neck': _ID['background'],
  'neck_l': _ID['background'],
  'cloth': _ID['background'],
  'hat': _ID['background'],
}
# Body and accessories behind the face first, then the face skin, the parts on it (smaller
# ones later), hair over the face, and a hat over the hair.
CELEBAMASK_HQ_ORDER = (
  'cloth',
  'neck',
  'neck_l',
  'l_ear',
  'r_ear',
  'ear_r',
  'skin',
  'eye_g',
  'nose',
  'l_lip',
  'u_lip',
  'mouth',
  'l_brow',
  'r_brow',
  'l_eye',
  'r_eye',
  'hair',
  'hat',
)
LAPA_CLASSES = np.arange(NUM_CLASSES, dtype=np.uint8)  # LaPa id -> our id
LAPA_SPLITS = ('train', 'val', 'test')
CELEBAMASK_HQ_HOLDOUT = 1000
SIDES = ('position', 'as_labelled')

_IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
_MASK_NAME = re.compile(r'^(\d+)_([a-z_]+)\.png$')
_PAIRS = (('left_brow', 'right_brow'), ('left_eye', 'right_eye'))

assert set(CELEBAMASK_HQ_ORDER) == set(CELEBAMASK_HQ_CLASSES)


class LayoutError(ValueError):
  """The folder is not in a layout this module reads."""


# ---------------------------------------------------------------------------------------
# Label maps (pure).


def celebamask_hq_labels(parts: Mapping[str, np.ndarray]) -> np.ndarray:
  """uint8 [H, W] class ids from CelebAMask-HQ part masks {part: bool [H, W]}."""
  unknown = sorted(set(parts) - set(CELEBAMASK_HQ_CLASSES))
  if unknown:
    raise LayoutError(
      f'unknown CelebAMask-HQ parts {unknown}; known: {sorted(CELEBAMASK_HQ_CLASSES)}'
    )
  if not parts:
    raise ValueError('no part masks given')
  shapes = {np.shape(m) for m in parts.values()}
  if len(shapes) != 1:
    raise ValueError(f'the part masks of one image differ in size: {sorted(shapes)}')
  labels = np.zeros(shapes.pop(), np.uint8)
  for part in CELEBAMASK_HQ_ORDER:
    if part in parts:
      labels[np.asarray(parts[part], bool)] = CELEBAMASK_HQ_CLASSES[part]
  return labels


def lapa_labels(ids: np.ndarray) -> np.ndarray:
  """uint8 [H, W] class ids from a LaPa label map (ids 0-10)."""
  ids = np.asarray(ids)
  if ids.size and (ids.min() < 0 or ids.max() >= len(LAPA_CLASSES)):
    raise ValueError(
      f'LaPa label ids must be 0..{len(LAPA_CLASSES) - 1}, found {sorted(np.unique(ids).tolist())}'
    )
  return LAPA_CLASSES[ids.astype(np.int64)]


def assign_sides_by_position(labels: np.ndarray) -> np.ndarray:
  """Renames each brow/eye pair so that the part further left in the image is ``left_*``."""
  labels = np.asarray(labels)
  out = labels.copy()
  cols = np.arange(labels.shape[1])
  for left, right in _PAIRS:
    a, b = labels == _ID[left], labels == _ID[right]
    if not a.any() or not b.any():
      continue
    mean_x = lambda m: float((m.sum(0) * cols).sum() / m.sum())
    if mean_x(a) > mean_x(b):
      out[a], out[b] = _ID[right], _ID[left]
  return out


# ---------------------------------------------------------------------------------------
# Folders.


@dataclasses.dataclass(frozen=True)
class ParsingExample:
  """One image and its labels: a LaPa label PNG, or CelebAMask-HQ {part: mask PNG}."""

  name: str
  image: pathlib.Path
  labels: pathlib.Path | Mapping[str, pathlib.Path]


def _listing(root: pathlib.Path) -> str:
  entries = sorted(p.name + ('/' if p.is_dir() else '') for p in root.iterdir())[:12]
  return ', '.join(entries) or '(empty)'


def detect_layout(root: str | os.PathLike) -> str:
  """'celebamask_hq' or 'lapa' from the folder's contents; LayoutError otherwise."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise LayoutError(f'parsing dataset folder {root} does not exist')
  if (root / 'CelebA-HQ-img').is_dir() and (root / 'CelebAMask-HQ-mask-anno').is_dir():
    return 'celebamask_hq'
  if any((root / s / 'images').is_dir() and (root / s / 'labels').is_dir() for s in LAPA_SPLITS):
    return 'lapa'
  nested = [p for p in (root / 'CelebAMask-HQ', root / 'LaPa') if p.is_dir()]
  hint = f'; did you mean {nested[0]}?' if nested else ''
  raise LayoutError(
    f'{root} is in neither known layout (found: {_listing(root)}). Expected CelebAMask-HQ '
    '(CelebA-HQ-img/<idx>.jpg and CelebAMask-HQ-mask-anno/<k>/<idx:05d>_<part>.png) or '
    f'LaPa (<split>/images/*.jpg and <split>/labels/*.png, split in {LAPA_SPLITS}){hint}'
  )


def _celebamask_hq_examples(root: pathlib.Path, split: str, holdout: int):
  if split not in ('train', 'val'):
    raise ValueError(
      f"CelebAMask-HQ splits are 'train' and 'val' (the last {holdout} indices), not {split!r}"
    )
  images = {}
  for path in (root / 'CelebA-HQ-img').iterdir():
    if path.suffix.lower() in _IMAGE_SUFFIXES and path.stem.isdigit():
      images[int(path.stem)] = path
  masks: dict[int, dict[str, pathlib.Path]] = {}
  for path in (root / 'CelebAMask-HQ-mask-anno').glob('*/*.png'):
    match = _MASK_NAME.match(path.name)
    if not match:
      raise LayoutError(f'{path}: expected mask files named <idx:05d>_<part>.png')
    index, part = int(match.group(1)), match.group(2)
    if part not in CELEBAMASK_HQ_CLASSES:
      raise LayoutError(
        f'{path}: unknown CelebAMask-HQ part {part!r}; known: {sorted(CELEBAMASK_HQ_CLASSES)}'
      )
    masks.setdefault(index, {})[part] = path
  if not images:
    raise LayoutError(f'{root / "CelebA-HQ-img"} holds no <idx>.jpg images')
  unlabelled = sorted(set(images) - set(masks))
  if unlabelled:
    raise LayoutError(
      f'{len(unlabelled)} CelebA-HQ images have no part masks in '
      f'{root / "CelebAMask-HQ-mask-anno"}/*/ (e.g. index {unlabelled[0]}, '
      f'expected {unlabelled[0]:05d}_skin.png ...)'
    )
  orphans = sorted(set(masks) - set(images))
  if orphans:
    raise LayoutError(
      f'part masks for index {orphans[0]} (and {len(orphans) - 1} more) '
      f'have no image {root / "CelebA-HQ-img"}/{orphans[0]}.jpg'
    )
  order = sorted(images)
  if not 0 <= holdout < len(order):
    raise ValueError(f'holdout={holdout} must leave training images: the folder has {len(order)}')
  cut = len(order) - holdout
  order = order[:cut] if split == 'train' else order[cut:]
  return [ParsingExample(str(i), images[i], masks[i]) for i in order]


def _lapa_examples(root: pathlib.Path, split: str):
  images_dir, labels_dir = root / split / 'images', root / split / 'labels'
  if not images_dir.is_dir() or not labels_dir.is_dir():
    have = [s for s in LAPA_SPLITS if (root / s / 'images').is_dir()]
    raise LayoutError(
      f'LaPa split {split!r} not found: {images_dir} and {labels_dir} are '
      f'needed (splits present: {have})'
    )
  images = {p.stem: p for p in images_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES}
  labels = {p.stem: p for p in labels_dir.glob('*.png')}
  missing = sorted(set(images) - set(labels))
  if missing:
    raise LayoutError(
      f'{len(missing)} LaPa images have no label map, e.g. {labels_dir / (missing[0] + ".png")}'
    )
  if not images:
    raise LayoutError(f'{images_dir} holds no images')
  return [ParsingExample(name, images[name], labels[name]) for name in sorted(images)]


def _square_resize(array: np.ndarray, size: int, nearest: bool) -> np.ndarray:
  from PIL import Image  # pylint: disable=import-outside-toplevel

  h, w = array.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  array = array[top : top + side, left : left + side]
  if side == size:
    return np.ascontiguousarray(array)
  method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
  return np.asarray(Image.fromarray(array).resize((size, size), method))


def _read(path: pathlib.Path, mode: str) -> np.ndarray:
  from PIL import Image  # pylint: disable=import-outside-toplevel

  with Image.open(path) as im:
    return np.asarray(im.convert(mode))


class ParsingFolder:
  """A face-parsing dataset folder (CelebAMask-HQ or LaPa layout), one split of it.

  Args:
    root: the dataset folder (the one holding CelebA-HQ-img/, or LaPa's split folders).
    split: LaPa 'train' / 'val' / 'test'; CelebAMask-HQ 'train' / 'val'.
    layout: 'auto' (``detect_layout``), 'celebamask_hq' or 'lapa'.
    sides: 'position' or 'as_labelled' (module doc).
    holdout: CelebAMask-HQ images held out as 'val'.
  """

  def __init__(
    self,
    root: str | os.PathLike,
    split: str = 'train',
    layout: str = 'auto',
    sides: str = 'position',
    holdout: int = CELEBAMASK_HQ_HOLDOUT,
  ):
    self.root = pathlib.Path(root)
    detected = detect_layout(self.root)
    if layout == 'auto':
      layout = detected
    elif layout not in LAYOUTS:
      raise ValueError(f'unknown layout {layout!r}: use one of {("auto",) + LAYOUTS}')
    elif layout != detected:
      raise LayoutError(f'{self.root} looks like the {detected!r} layout, not {layout!r}')
    if sides not in SIDES:
      raise ValueError(f'unknown sides={sides!r}: use one of {SIDES}')
    self.layout, self.split, self.sides = layout, split, sides
    if layout == 'celebamask_hq':
      self.examples = _celebamask_hq_examples(self.root, split, holdout)
    else:
      self.examples = _lapa_examples(self.root, split)

  def __len__(self) -> int:
    return len(self.examples)

  def labels(self, i: int) -> np.ndarray:
    """uint8 [H, W] class ids of example ``i`` at the annotation's own size."""
    example = self.examples[i]
    if self.layout == 'celebamask_hq':
      labels = celebamask_hq_labels(
        {part: _read(path, 'L') > 127 for part, path in example.labels.items()}
      )
    else:
      from PIL import Image  # pylint: disable=import-outside-toplevel

      with Image.open(example.labels) as im:
        if im.mode not in ('L', 'P', 'I', 'I;16'):
          raise LayoutError(
            f'{example.labels}: LaPa labels are single-channel id maps, this PNG is {im.mode}'
          )
        ids = np.asarray(im)
      labels = lapa_labels(ids)
    return assign_sides_by_position(labels) if self.sides == 'position' else labels

  def load(self, i: int, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image [R, R, 3], uint8 class ids [R, R]) of example ``i`` (module doc)."""
    image = _read(self.examples[i].image, 'RGB')
    labels = self.labels(i)
    # CelebAMask-HQ's masks are half the image size: bring both to the same square first.
    if labels.shape != image.shape[:2]:
      ih, iw = image.shape[:2]
      lh, lw = labels.shape
      if abs(ih / iw - lh / lw) > 0.01:
        raise LayoutError(
          f'{self.examples[i].name}: image {iw}x{ih} and labels {lw}x{lh} differ in aspect ratio'
        )
    return (
      _square_resize(image, resolution, nearest=False),
      _square_resize(labels, resolution, nearest=True),
    )
