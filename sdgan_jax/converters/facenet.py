"""facenet-pytorch InceptionResnetV1 state dicts -> Flax variables of ``models.facenet``.

The pretrained FaceNet weights (VGGFace2, CASIA-WebFace) are published only as GitHub
release assets of facenet-pytorch, not in any package on a registry, so there is no
``SOURCE`` to fetch: users download the file themselves (``USER_DOWNLOAD``) and convert it
with ``tools/convert_facenet.py``. The files are plain PyTorch state dicts with keys such
as ``conv2d_1a.conv.weight``, ``repeat_1.0.branch1.1.bn.running_var``,
``last_linear.weight``, ``last_bn.running_mean`` and ``logits.weight``.

The conversion is strict: every parameter of the Flax model must be in the file with the
right shape and the file may hold nothing else (besides BatchNorm's
``num_batches_tracked`` counters), so a file of another architecture fails with an error
naming the offending keys instead of giving wrong embeddings. The ``logits`` head is
optional and kept only when the file has it.
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sdgan_jax.converters.registry import RegistryFile
from sdgan_jax.models.facenet import InceptionResnetV1

SOURCE: RegistryFile | None = None
RELEASE_URL = 'https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/'
# Weight name -> the release file it is converted from.
FILES = {
  'facenet_vggface2': '20180402-114759-vggface2.pt',
  'facenet_casia_webface': '20180408-102900-casia-webface.pt',
}
USER_DOWNLOAD = f"""\
FaceNet (InceptionResnetV1) weights are not on any package registry, so they are not
fetched automatically. Download them from facenet-pytorch's GitHub release v2.2.9
(https://github.com/timesler/facenet-pytorch/releases/tag/v2.2.9):

  VGGFace2 (the default weights name, facenet_vggface2):
    {RELEASE_URL}{FILES['facenet_vggface2']}
    python tools/convert_facenet.py --input {FILES['facenet_vggface2']} --name facenet_vggface2

  CASIA-WebFace:
    {RELEASE_URL}{FILES['facenet_casia_webface']}
    python tools/convert_facenet.py --input {FILES['facenet_casia_webface']} \\
        --name facenet_casia_webface

Add --weights-dir DIR to write somewhere other than $SDGAN_WEIGHTS_DIR
(default ~/.cache/sdgan_jax/weights). The weights come from David Sandberg's facenet
(MIT licence), ported to PyTorch by Tim Esler's facenet-pytorch (MIT licence); the face
datasets they were trained on have their own terms of use.
"""

# BatchNorm bookkeeping that has no Flax counterpart.
_IGNORED_SUFFIX = '.num_batches_tracked'
_SEQUENTIAL = re.compile(r'^(repeat_\d+|branch\d+)_(\d+)$')
_LEAF_NAMES = {
  'kernel': 'weight',
  'scale': 'weight',
  'bias': 'bias',
  'mean': 'running_mean',
  'var': 'running_var',
}


class ConversionError(ValueError):
  """The state dict does not match facenet-pytorch's InceptionResnetV1."""


def print_instructions() -> None:
  """Prints where to download the FaceNet weights and how to convert them."""
  print(USER_DOWNLOAD)


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """The facenet-pytorch state-dict key of a Flax variable path.

  Flax module names ``repeat_1_0`` / ``branch1_2`` are PyTorch's ``nn.Sequential``
  children ``repeat_1.0`` / ``branch1.2``.
  """
  *modules, leaf = path
  parts = [_SEQUENTIAL.sub(r'\1.\2', m) for m in modules]
  if collection == 'batch_stats' and leaf not in ('mean', 'var'):
    raise ValueError(f'unexpected batch_stats leaf {path}')
  return '.'.join(parts + [_LEAF_NAMES[leaf]])


def _to_flax(leaf: str, value: np.ndarray) -> np.ndarray:
  if leaf == 'kernel':
    # PyTorch (out, in, kh, kw) -> Flax (kh, kw, in, out); Linear (out, in) -> (in, out).
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
  return value


def _load_state_dict(path_or_state_dict: Any) -> dict[str, np.ndarray]:
  sd = path_or_state_dict
  if isinstance(sd, (str, os.PathLike)):
    import torch  # Lazy: only the conversion needs PyTorch.

    sd = torch.load(os.fspath(sd), map_location='cpu', weights_only=True)
  if hasattr(sd, 'state_dict') and not isinstance(sd, Mapping):
    sd = sd.state_dict()
  if not isinstance(sd, Mapping):
    raise ConversionError(
      f'expected a state dict (a mapping of names to tensors), got {type(sd).__name__}'
    )
  out = {}
  for key, value in sd.items():
    if key.endswith(_IGNORED_SUFFIX):
      continue
    if hasattr(value, 'detach'):
      value = value.detach().cpu().float().numpy()
    out[key] = np.asarray(value, dtype=np.float32)
  return out


@functools.lru_cache(maxsize=4)
def expected_shapes(num_classes: int | None = None) -> dict[str, tuple[str, tuple, tuple]]:
  """Maps each state-dict key to (collection, Flax path, Flax shape) for the model.

  Cached: tracing the network for its shapes takes seconds. Callers must not mutate it.
  """
  model = InceptionResnetV1(classify=bool(num_classes), num_classes=num_classes, image_size=None)
  shapes = jax.eval_shape(
    model.init, jax.random.PRNGKey(0), jnp.zeros((1, 160, 160, 3), jnp.float32)
  )
  out = {}
  for collection, tree in shapes.items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      names = tuple(p.key for p in path)
      out[torch_key(collection, names)] = (collection, names, tuple(leaf.shape))
  return out


def _describe(keys: list[str], limit: int = 8) -> str:
  more = f' (and {len(keys) - limit} more)' if len(keys) > limit else ''
  return ', '.join(keys[:limit]) + more


def convert(path_or_state_dict: Any) -> dict[str, Any]:
  """Converts a facenet-pytorch InceptionResnetV1 state dict to Flax variables.

  Args:
    path_or_state_dict: a ``.pt`` file holding the state dict (read with
      ``torch.load(weights_only=True)``), or the state dict itself (tensors or arrays).

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` of float32 numpy arrays for
    ``InceptionResnetV1(num_classes=num_classes_of(variables))``; ``params['logits']``
    exists only when the file has the ``logits`` head.

  Raises:
    ConversionError: keys missing, unexpected or of the wrong shape (named in the message).
  """
  sd = _load_state_dict(path_or_state_dict)
  num_classes = sd['logits.weight'].shape[0] if 'logits.weight' in sd else None
  if num_classes is None and 'logits.bias' in sd:
    num_classes = sd['logits.bias'].shape[0]
  expected = expected_shapes(num_classes)
  missing = sorted(set(expected) - set(sd))
  unexpected = sorted(set(sd) - set(expected))
  if missing or unexpected:
    problems = []
    if missing:
      problems.append(f'missing keys: {_describe(missing)}')
    if unexpected:
      problems.append(f'unexpected keys: {_describe(unexpected)}')
    raise ConversionError(
      'not a facenet-pytorch InceptionResnetV1 state dict: ' + '; '.join(problems)
    )
  variables: dict[str, Any] = {}
  wrong = []
  for key, (collection, path, shape) in expected.items():
    value = _to_flax(path[-1], sd[key])
    if value.shape != shape:
      wrong.append(f'{key} {tuple(sd[key].shape)}')
      continue
    node = variables.setdefault(collection, {})
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = np.ascontiguousarray(value)
  if wrong:
    raise ConversionError(f'keys with the wrong shape: {_describe(wrong)}')
  return variables


def num_classes_of(variables: Mapping[str, Any]) -> int | None:
  """Size of the logits head in converted variables, or None when they have none."""
  logits = variables['params'].get('logits')
  return None if logits is None else int(np.shape(logits['bias'])[0])


def metadata(path: str | os.PathLike, variables: Mapping[str, Any]) -> dict[str, Any]:
  """Provenance of a conversion from the file at ``path`` (for ``save_weights``)."""
  from sdgan_jax.weights import sha256_file

  name = pathlib.Path(path).name
  return {
    'package': 'facenet-pytorch',
    'version': 'v2.2.9 (GitHub release asset)',
    'source': (RELEASE_URL + name) if name in FILES.values() else 'user file',
    'member': name,
    'source_sha256': sha256_file(path),
    'converter': 'sdgan_jax.converters.facenet',
    'num_classes': num_classes_of(variables),
  }


def convert_file(
  path: str | os.PathLike,
  name: str = 'facenet_vggface2',
  weights_dir: str | os.PathLike | None = None,
) -> pathlib.Path:
  """Converts the state dict at ``path`` and saves it as weights ``name``; returns the path."""
  from sdgan_jax.weights import save_weights

  variables = convert(path)
  return save_weights(name, variables, metadata(path, variables), weights_dir)
