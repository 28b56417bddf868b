"""The 68-point landmark scheme (iBUG 300-W, as dlib's shape predictor outputs it).

Indices are 0-based. "Left" and "right" are *image* left and right throughout this package,
the convention of CelebA's ``lefteye_x`` and of face_recognition's ``face_landmarks``: for a
frontal face, ``LEFT_EYE`` (36-41) is the eye with the smaller x, i.e. the subject's right eye.
``LEFT_BROW`` (17-21) is the brow above ``LEFT_EYE``, so 'left_eye' and 'left_brow' of the
semantic map always sit on the same side of the face.
"""

from __future__ import annotations

import numpy as np

NUM_LANDMARKS = 68

JAW = np.arange(0, 17)  # image-left ear -> chin (8) -> image-right ear
LEFT_BROW = np.arange(17, 22)  # outer -> inner end
RIGHT_BROW = np.arange(22, 27)  # inner -> outer end
NOSE_BRIDGE = np.arange(27, 31)  # between the eyes -> tip
NOSE_BASE = np.arange(31, 36)  # image-left nostril wing -> subnasale (33) -> right wing
LEFT_EYE = np.arange(36, 42)  # contour, outer corner first
RIGHT_EYE = np.arange(42, 48)  # contour, inner corner first
OUTER_LIPS = np.arange(48, 60)  # left corner (48) -> top (51) -> right corner (54) -> bottom
INNER_LIPS = np.arange(60, 68)  # left corner (60) -> top (62) -> right corner (64) -> bottom
MOUTH = np.arange(48, 68)
CHIN = 8


def _mirror_indices() -> np.ndarray:
  """Index i of a horizontally flipped face's landmarks is index MIRROR[i] of the original
  (the image-left and image-right halves of every contour swap; midline points stay)."""
  mirror = np.arange(NUM_LANDMARKS)
  pairs = [
    (JAW, JAW[::-1]),
    (LEFT_BROW, RIGHT_BROW[::-1]),
    (NOSE_BASE, NOSE_BASE[::-1]),
    (LEFT_EYE, RIGHT_EYE[[3, 2, 1, 0, 5, 4]]),
    (OUTER_LIPS, OUTER_LIPS[[6, 5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7]]),
    (INNER_LIPS, INNER_LIPS[[4, 3, 2, 1, 0, 7, 6, 5]]),
  ]
  for a, b in pairs:
    mirror[a] = b
    mirror[b] = a
  return mirror


MIRROR = _mirror_indices()


def check_landmarks(landmarks) -> np.ndarray:
  """Returns ``landmarks`` as float64 [68, 2] (x, y), or raises naming the wrong shape."""
  points = np.asarray(landmarks, np.float64)
  if points.shape != (NUM_LANDMARKS, 2):
    raise ValueError(
      f'expected 68 (x, y) landmarks of shape (68, 2), got {points.shape}; '
      'use the 68-point predictor (LandmarkPredictor), not the 5-point one'
    )
  if not np.all(np.isfinite(points)):
    raise ValueError('landmarks contain NaN or inf')
  return points


def eye_centres(landmarks) -> np.ndarray:
  """[2, 2]: the image-left and image-right eye centres (mean of each eye contour)."""
  points = check_landmarks(landmarks)
  return np.stack([points[LEFT_EYE].mean(0), points[RIGHT_EYE].mean(0)])


def mouth_centre(landmarks) -> np.ndarray:
  """[2]: mean of the 20 mouth points 48-67."""
  return check_landmarks(landmarks)[MOUTH].mean(0)


# The 68 points from MediaPipe's 468-point face mesh (``faces.mesh``): for each point of the
# scheme, the mesh vertex that lies nearest it on average. Measured on the sample photos'
# five faces and their mirror images, dlib's points against the mesh fitted to the same face
# (tests/test_verify.py checks it again): 2.1% of the face width apart on average, at most
# 4.7% for the average of a point, the jaw line the loosest (dlib's jaw follows the visible
# outline, the mesh's vertices a fixed place on the skin).
FROM_MESH = np.array(
  [
    127,
    234,
    177,
    215,
    172,
    136,
    149,
    148,
    152,
    377,
    378,
    365,
    397,
    435,
    401,
    454,
    356,  # jaw
    156,
    63,
    105,
    66,
    55,
    285,
    296,
    334,
    293,
    383,  # brows
    168,
    197,
    5,
    4,
    240,
    97,
    2,
    326,
    460,  # nose
    7,
    160,
    158,
    155,
    153,
    144,
    382,
    385,
    387,
    249,
    373,
    380,  # eyes
    61,
    39,
    37,
    11,
    267,
    304,
    291,
    321,
    314,
    17,
    85,
    91,  # outer lips
    78,
    38,
    13,
    268,
    308,
    317,
    14,
    87,
  ]
)  # inner lips


def from_mesh(points) -> np.ndarray:
  """float32 [68, 2]: the scheme's points taken from a face mesh's [468, 2+] points."""
  points = np.asarray(points, np.float64)
  if points.ndim != 2 or points.shape[0] != 468 or points.shape[1] < 2:
    raise ValueError(f"expected the face mesh's 468 points, got shape {points.shape}")
  return points[FROM_MESH, :2].astype(np.float32)
