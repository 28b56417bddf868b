"""The record format of a prepared face dataset (the contract between data preparation,
the TFDS builders and the input pipeline).

One example per face crop, aligned on the eyes at ``resolution`` px (128 by default; the
pipeline resizes to 64 for the quantitative setting, paper §4.1):

  image      uint8 [R, R, 3]  aligned RGB crop
  mask       uint8 [R, R, 1]  face mask, 0 or 255 (jaw line closed above the brows)
  semantic   uint8 [R, R, 1]  class id 0..num_classes-1 (SEMANTIC_CLASSES below)
  landmarks  float32 [68, 2]  (x, y) in crop pixel coordinates
  identity   int64            the source dataset's identity id (CelebA: 1..10177)
  label      int64            index of the identity within its split (0..N-1)
  filename   string           source file name (relative to the source folder)

No TensorFlow import here: the feature *spec* is plain data; ``tfds_features`` builds the
TFDS FeaturesDict on demand.
"""

from __future__ import annotations

# The face geometry below the datasets owns the classes and the crop size; a record holds them.
from sdgan_jax.faces.align import DEFAULT_RESOLUTION
from sdgan_jax.faces.masks import (  # re-exported: the record's classes
  MASKED_CLASSES as MASKED_CLASSES,
)
from sdgan_jax.faces.masks import (
  NUM_CLASSES as NUM_CLASSES,
)
from sdgan_jax.faces.masks import (
  SEMANTIC_CLASSES as SEMANTIC_CLASSES,
)

NUM_LANDMARKS = 68


def tfds_features(resolution: int = DEFAULT_RESOLUTION):
  """The ``tfds.features.FeaturesDict`` of one prepared example."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  r = resolution
  return tfds.features.FeaturesDict(
    {
      'image': tfds.features.Image(shape=(r, r, 3), encoding_format='png'),
      'mask': tfds.features.Image(shape=(r, r, 1), encoding_format='png'),
      'semantic': tfds.features.Image(shape=(r, r, 1), encoding_format='png'),
      'landmarks': tfds.features.Tensor(shape=(NUM_LANDMARKS, 2), dtype=np.float32),
      'identity': np.int64,
      'label': np.int64,
      'filename': tfds.features.Text(),
    }
  )
