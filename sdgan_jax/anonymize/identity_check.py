"""The identity backbone: dlib's ResNet descriptor on dlib's face chips (docs/weights.md).

The anonymizer's identity check (is the output face still the source person?) and its
'farthest' targets see faces the way dlib's face recognition does: a 150-px chip aligned by
``get_face_chip`` (padding 0.25) from the 68 landmarks, through the JAX port of dlib's
ResNet (``sdgan_jax.models.dlib_resnet``); two chips show one person when their descriptors
are closer than 0.6.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from sdgan_jax import batching
from sdgan_jax.faces import detect

CHIP_SIZE = 150  # dlib's face chip for its descriptor
CHIP_PADDING = 0.25
DESCRIPTOR_DIM = 128


class IdentityBackbone:
  """dlib's ResNet descriptor (JAX port) on dlib's aligned face chips, in padded batches."""

  def __init__(
    self, weights_dir: str | os.PathLike | None = None, batch_size: int = 8, variables=None
  ):
    # Imported here: JAX and Flax load only when an identity check is wanted.
    from sdgan_jax import weights  # pylint: disable=import-outside-toplevel
    from sdgan_jax.models import dlib_resnet  # pylint: disable=import-outside-toplevel

    self._variables = variables or weights.load_weights('dlib_resnet', weights_dir)
    self._apply = dlib_resnet.jitted_apply()
    self.batch_size = batch_size

  @staticmethod
  def chip(image: np.ndarray, box, landmarks) -> np.ndarray:
    """dlib's 150x150 aligned chip (``get_face_chip``, padding 0.25) of a face's landmarks."""
    dlib = detect._import_dlib()  # pylint: disable=protected-access
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    points = dlib.points(
      [dlib.point(int(round(float(x))), int(round(float(y)))) for x, y in landmarks]
    )
    shape = dlib.full_object_detection(dlib.rectangle(x0, y0, x1, y1), points)
    return np.asarray(
      dlib.get_face_chip(np.ascontiguousarray(image), shape, size=CHIP_SIZE, padding=CHIP_PADDING)
    )

  def descriptors(self, chips: Sequence[np.ndarray]) -> np.ndarray:
    """float32 [N, 128] descriptors of uint8 [150, 150, 3] chips."""
    if not len(chips):
      return np.zeros((0, DESCRIPTOR_DIM), np.float32)
    pixels = np.stack(chips).astype(np.float32) / 255.0
    out = batching.map_batches(
      lambda batch: self._apply(self._variables, batch), pixels, batch_size=self.batch_size
    )
    return out.astype(np.float32)

  def face_descriptors(self, images: Sequence[np.ndarray], faces) -> np.ndarray:
    """Descriptors of prepared faces (``pipeline.Face``), each in its image of ``images``."""
    return self.descriptors(
      [self.chip(image, face.box, face.image_landmarks) for image, face in zip(images, faces)]
    )
