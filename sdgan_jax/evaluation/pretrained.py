"""The pretrained networks behind the tables (paper §4.2-4.3): face embeddings and FID pool3.

* identity embedding for Recall@1: FaceNet (InceptionResnetV1, the paper's choice) when its
  converted weights exist (``facenet_vggface2``, then ``facenet_casia_webface``); they are on
  no package registry (docs/weights.md), so otherwise dlib's ResNet descriptor (``dlib_resnet``,
  from `make weights`). The tables name the one used.
* FID Inception-v3 pool3 (``inception_fid``, from `make weights`).

Each runs jitted on fixed-size batches (the last one padded, ``batching.map_batches``), so XLA
compiles one program per network whatever the number of faces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from sdgan_jax import batching
from sdgan_jax import weights as weights_lib
from sdgan_jax.perf import xla_options

FACENET_WEIGHTS = ('facenet_vggface2', 'facenet_casia_webface')
EMBEDDING_NAMES = {
  'facenet_vggface2': 'FaceNet (VGGFace2)',
  'facenet_casia_webface': 'FaceNet (CASIA-WebFace)',
  'dlib_resnet': 'dlib ResNet',
}


@dataclasses.dataclass
class BatchedNet:
  """A jitted ``images [B, H, W, 3] in [0, 1] -> features [B, D]`` on fixed batches.

  Attributes:
    name: the weights' name ('inception_fid', 'dlib_resnet', 'facenet_vggface2', ...).
    label: how the tables call it.
    apply: ``(variables, images) -> features``, jitted (so a shared jitted function, e.g.
      ``dlib_resnet.jitted_apply()``, keeps its compiled programs).
  """

  name: str
  label: str
  apply: Callable
  variables: dict
  batch_size: int = 64

  def __call__(self, images) -> np.ndarray:
    out = batching.map_batches(
      lambda chunk: self.apply(self.variables, chunk),
      np.asarray(images, np.float32),
      batch_size=self.batch_size,
    )
    return np.zeros((0, 0), np.float32) if out is None else out


def _load(name: str, weights_dir) -> dict:
  try:
    return weights_lib.load_weights(name, weights_dir)
  except weights_lib.WeightsNotFoundError as e:
    raise weights_lib.WeightsNotFoundError(f'the evaluation needs the {name!r} weights: {e}') from e


def embedding_net(weights_dir=None, batch_size: int = 64, prefer: str | None = None) -> BatchedNet:
  """FaceNet if converted weights are present (or ``prefer`` names some), else dlib ResNet."""
  available = set(weights_lib.available_weights(weights_dir))
  if prefer is not None:
    candidates = [prefer]
  else:
    candidates = [n for n in FACENET_WEIGHTS if n in available] + ['dlib_resnet']
  name = candidates[0]
  variables = _load(name, weights_dir)
  if name.startswith('facenet'):
    from sdgan_jax.models import facenet  # pylint: disable=import-outside-toplevel

    apply = xla_options.jit_network(facenet.InceptionResnetV1().apply)
  elif name == 'dlib_resnet':
    from sdgan_jax.models import dlib_resnet  # pylint: disable=import-outside-toplevel

    apply = dlib_resnet.jitted_apply()
  else:
    raise ValueError(f'unknown embedding network {name!r}; use one of {sorted(EMBEDDING_NAMES)}')
  return BatchedNet(name, EMBEDDING_NAMES[name], apply, variables, batch_size)


def inception_net(weights_dir=None, batch_size: int = 64) -> BatchedNet:
  """The FID Inception-v3, returning pool3 features [B, 2048]."""
  from sdgan_jax.models.inception import FIDInceptionV3  # pylint: disable=import-outside-toplevel

  model = FIDInceptionV3()
  variables = _load('inception_fid', weights_dir)
  return BatchedNet(
    'inception_fid',
    'Inception-v3 pool3 (FID)',
    xla_options.jit_network(lambda v, x: model.apply(v, x)['pool']),
    variables,
    batch_size,
  )
