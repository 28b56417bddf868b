"""68 landmarks of tilted faces: turn the face upright with the detector's keypoints first.

dlib's 68-point shape predictor was trained on upright faces in boxes from its HOG
detector; on a face tilted by 30-45 degrees in the image plane it fails. BlazeFace
(``faces.blazeface_detector``) gives six keypoints with every face, so ``fit_landmarks``

1. takes the face's roll from its eyes (the line from the right eye to the left eye),
2. resamples a window around the face turned upright (face width normalised to
   ``WORK_WIDTH`` px),
3. puts a dlib-style box on it, placed from the keypoints by the relation measured between
   BlazeFace's keypoints and dlib's HOG boxes on the recall set (``docs/detection.md``):
   centre ``BOX_DROP`` eye-to-mouth distances below the eyes' midpoint, side
   ``BOX_SIDE`` eye-to-mouth distances,
4. fits the 68 points there and maps them back into the photo.

Without keypoints (dlib's detectors) the predictor runs on the detector's box as it is.
"""

from __future__ import annotations

import math

import numpy as np

from sdgan_jax.faces import align, blazeface_detector, detect

BOX_DROP = 0.40
BOX_SIDE = 2.2
WORK_WIDTH = 200.0


def has_keypoints(keypoints) -> bool:
  return keypoints is not None and bool(np.all(np.isfinite(keypoints)))


def roll_degrees(keypoints: np.ndarray) -> float:
  """The face's in-plane rotation, counter-clockwise as seen, from its eye keypoints."""
  right, left = keypoints[blazeface_detector.RIGHT_EYE], keypoints[blazeface_detector.LEFT_EYE]
  # Image y points down: a face turned counter-clockwise has its left eye (image right) up.
  return float(math.degrees(math.atan2(-(left[1] - right[1]), left[0] - right[0])))


def upright_frame(keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(matrix [2, 3] photo -> upright window, dlib-style box in the window, inclusive)."""
  kp = np.asarray(keypoints, np.float64)
  eyes = (kp[blazeface_detector.RIGHT_EYE] + kp[blazeface_detector.LEFT_EYE]) / 2
  eye_to_mouth = float(np.linalg.norm(kp[blazeface_detector.MOUTH] - eyes))
  side = max(BOX_SIDE * eye_to_mouth, 1.0)
  scale = WORK_WIDTH / side
  theta = math.radians(roll_degrees(kp))
  c, s = math.cos(theta), math.sin(theta)
  # A roll of theta (y down) maps the upright axes by [[c, s], [-s, c]]; its inverse turns
  # the face upright. The face's own "down" (eyes to mouth) is the roll applied to (0, 1).
  linear = scale * np.array([[c, -s], [s, c]])
  down = np.array([s, c])
  size = 3.0 * WORK_WIDTH
  centre = eyes + BOX_DROP * eye_to_mouth * down
  offset = np.array([size / 2, size / 2]) - linear @ centre
  matrix = np.concatenate([linear, offset[:, None]], axis=1)
  half = WORK_WIDTH / 2
  box = np.array([size / 2 - half, size / 2 - half, size / 2 + half - 1, size / 2 + half - 1])
  return matrix, box


def fit_landmarks(
  predictor: detect.LandmarkPredictor, image: np.ndarray, box, keypoints=None
) -> np.ndarray:
  """[68, 2] landmarks of the face in ``box`` (module doc); ``keypoints`` [6, 2] or None."""
  if not has_keypoints(keypoints):
    return predictor(image, box)
  matrix, work_box = upright_frame(keypoints)
  size = int(3 * WORK_WIDTH)
  window = align.warp_affine(image, matrix, (size, size), mode='constant')
  window = np.clip(np.round(window), 0, 255).astype(np.uint8)
  points = predictor(window, work_box)
  return align.apply_matrix(align.invert_matrix(matrix), points).astype(np.float32)


def face_region(box, keypoints=None) -> np.ndarray:
  """(x0, y0, x1, y1), inclusive: ``box`` grown to hold the dlib-style face box that the
  keypoints place (``upright_frame``), turned with the face; what a fallback must cover,
  since detectors' boxes differ (BlazeFace's sits higher than dlib's, which reaches the
  chin)."""
  box = np.asarray(box, np.float64).reshape(4)
  if not has_keypoints(keypoints):
    return box.astype(np.float32)
  matrix, work_box = upright_frame(keypoints)
  x0, y0, x1, y1 = work_box
  corners = np.array([[x0, y0], [x1 + 1, y0], [x0, y1 + 1], [x1 + 1, y1 + 1]])
  points = align.apply_matrix(align.invert_matrix(matrix), corners)
  return np.array(
    [
      min(box[0], points[:, 0].min()),
      min(box[1], points[:, 1].min()),
      max(box[2], points[:, 0].max() - 1),
      max(box[3], points[:, 1].max() - 1),
    ],
    np.float32,
  )
