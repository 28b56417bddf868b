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

No TensorFlow here: data preparation's workers read these constants too; the TFDS
FeaturesDict of a record is ``builder.tfds_features``.
"""

from __future__ import annotations

# The face geometry below the datasets owns the classes and the crop size; a record holds them.
from sdgan_jax.faces.align import DEFAULT_RESOLUTION as DEFAULT_RESOLUTION
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
