"""The fail-closed fallback: a face that cannot be anonymized is pixelated or filled.

What is covered is the face's region (the detection box grown to the face box its keypoints
place, ``faces.upright.face_region``) enlarged by ``Options.fallback_margin`` on each side.
"""

from __future__ import annotations

import numpy as np

from sdgan_jax.anonymize.options import Options


def clip_box(box, shape, margin: float = 0.0) -> tuple[int, int, int, int]:
  """Integer [x0, x1) x [y0, y1) of ``box`` enlarged by ``margin`` per side, in the image."""
  x0, y0, x1, y1 = (float(v) for v in box)
  mw, mh = margin * (x1 - x0 + 1), margin * (y1 - y0 + 1)
  h, w = shape[:2]
  return (
    int(np.clip(np.floor(x0 - mw), 0, w)),
    int(np.clip(np.floor(y0 - mh), 0, h)),
    int(np.clip(np.ceil(x1 + mw) + 1, 0, w)),
    int(np.clip(np.ceil(y1 + mh) + 1, 0, h)),
  )


def cover(image: np.ndarray, box, options: Options) -> np.ndarray:
  """The fail-closed fallback: pixelates or fills ``box`` enlarged by the margin."""
  from sdgan_jax import baselines  # pylint: disable=import-outside-toplevel

  x0, y0, x1, y1 = clip_box(box, image.shape, options.fallback_margin)
  if x1 <= x0 or y1 <= y0:
    return image
  out = image.copy()
  region = out[y0:y1, x0:x1].astype(np.float32) / 255.0
  if options.fallback == 'fill':
    covered = baselines.solid_fill(region)
  else:
    covered = baselines.pixelate(region, min(options.fallback_blocks, *region.shape[:2]))
  out[y0:y1, x0:x1] = np.clip(np.round(covered * 255.0), 0, 255).astype(np.uint8)
  return out
