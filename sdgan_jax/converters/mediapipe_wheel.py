"""MediaPipe's ``.tflite`` models out of its pinned wheel, mapped onto the Flax ports' layers.

Shared by the BlazeFace (``converters/blazeface.py``) and face mesh
(``converters/face_mesh.py``) converters. The source is the ``mediapipe==0.10.21`` wheel on
PyPI (Apache-2.0), fetched by its exact tags and sha256 (``registry.RegistryFile``); only
the wanted ``.tflite`` members are read, MediaPipe itself is never installed (it pins
numpy<2 and protobuf<5).

Mapping (``assign_layers``): the file's weighted operators, in an order the converter chooses
(execution order, or per branch), are the Flax model's weighted layers in call order, each
checked for kind, shape and stride before its weights are taken:

* CONV_2D kernels are [out, h, w, in] (-> HWIO), DEPTHWISE_CONV_2D kernels [1, h, w, C]
  (-> [h, w, 1, C]) onto ``models.blazeface.Conv``; every conv has a bias;
* PRELU slopes [1, 1, C] onto ``models.face_mesh.PReLU`` (``alpha`` [C]).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sdgan_jax.converters.registry import RegistryFile

MEDIAPIPE_WHEEL = dict(
  registry='pypi',
  package='mediapipe',
  version='0.10.21',
  archive='mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl',
  sha256='05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3',
)


def wheel_file(member: str) -> RegistryFile:
  """The pinned wheel's file ``member`` (e.g. 'mediapipe/modules/.../x.tflite')."""
  return RegistryFile(**MEDIAPIPE_WHEEL, member=member)


def layer_calls(model, input_shape: Sequence[int]) -> list[tuple[tuple[str, ...], Any]]:
  """(module path, module) of the model's weighted layers (``Conv``, ``PReLU``) in call
  order, from an abstract ``init`` (nothing is computed)."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from sdgan_jax.models import blazeface, face_mesh  # pylint: disable=import-outside-toplevel

  calls = []

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, (blazeface.Conv, face_mesh.PReLU)) and context.method_name == '__call__':
      calls.append((tuple(module.path), module))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(tuple(input_shape), jnp.float32))
  return calls


def expected_params(model, input_shape: Sequence[int]) -> dict:
  """The model's parameter tree as shapes (``jax.ShapeDtypeStruct`` leaves)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(tuple(input_shape), jnp.float32))[
    'params'
  ]


def assign_layers(graph, ops: Sequence, calls: Sequence, expected: dict) -> dict:
  """Flax ``params`` from the file's weighted ``ops`` paired with the model's ``calls``
  (``layer_calls``) one to one; raises ``ValueError`` naming the first pair that does not
  fit (kind, kernel shape, stride, slope count)."""
  from sdgan_jax.models import blazeface  # pylint: disable=import-outside-toplevel

  if len(ops) != len(calls):
    raise ValueError(f'the file has {len(ops)} weighted layers, the model {len(calls)}')
  params: dict = {}
  for op, (path, module) in zip(ops, calls):
    want, node = expected, params
    for scope in path:
      want, node = want[scope], node.setdefault(scope, {})
    where = '/'.join(path)
    is_conv = isinstance(module, blazeface.Conv)
    kind = ('DEPTHWISE_CONV_2D' if module.depthwise else 'CONV_2D') if is_conv else 'PRELU'
    if op.kind != kind:
      raise ValueError(
        f'{where}: the file has {op.kind} {graph.name(op.outputs[0])!r} where '
        f'the model expects {kind}'
      )
    if is_conv:
      kernel = graph.constant(op.inputs[1]).astype(np.float32)
      bias = graph.constant(op.inputs[2]).astype(np.float32)
      kernel = kernel.transpose((1, 2, 0, 3) if module.depthwise else (1, 2, 3, 0))
      stride = (module.strides, module.strides)
      if (
        op.options['strides'] != stride
        or kernel.shape != want['kernel'].shape
        or bias.shape != want['bias'].shape
      ):
        raise ValueError(
          f'{where}: the file has {op.kind} {graph.name(op.inputs[1])!r} with kernel '
          f'{kernel.shape} stride {op.options.get("strides")}; the model expects {kind} '
          f'{want["kernel"].shape} stride {stride}'
        )
      node.update(kernel=kernel, bias=bias)
    else:
      alpha = graph.constant(op.inputs[1]).astype(np.float32)
      if alpha.size != want['alpha'].shape[0]:
        raise ValueError(
          f'{where}: the file has PRELU with {alpha.size} slopes '
          f'({graph.name(op.inputs[1])!r}); the model expects PRELU with '
          f'{want["alpha"].shape[0]} slopes'
        )
      node.update(alpha=alpha.reshape(-1))
  return params
