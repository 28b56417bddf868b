"""MediaPipe's face mesh ``.tflite`` to ``sdgan_jax.models.face_mesh.FaceMeshNet`` variables.

Source: ``mediapipe/modules/face_landmark/face_landmark.tflite`` (468 landmarks, no
attention) in the pinned ``mediapipe==0.10.21`` wheel on PyPI (Apache-2.0;
``converters.mediapipe_wheel``), float16 weights decoded by ``converters.tflite_file``.

Mapping: the file runs the two heads interleaved, operator by operator. Its weighted
operators (CONV_2D, DEPTHWISE_CONV_2D, PRELU) are therefore sorted by branch first -- the
trunk (feeding both outputs), the landmark head (feeding only the 1,404 landmark values),
the presence head (only the logit) -- and by execution order within a branch, which is the
order the Flax model calls its layers in; each pair is checked for kind, shape and stride
(``mediapipe_wheel.assign_layers``).
"""

from __future__ import annotations

import os
import pathlib

from sdgan_jax.converters import mediapipe_wheel
from sdgan_jax.converters.registry import fetch_file, provenance

NAME = 'face_mesh'
SOURCE = mediapipe_wheel.wheel_file('mediapipe/modules/face_landmark/face_landmark.tflite')
WEIGHTED = ('CONV_2D', 'DEPTHWISE_CONV_2D', 'PRELU')


def _ancestors(graph, tensor: int) -> set[int]:
  """Indices of the operators that ``tensor`` is computed from (weight decoding included)."""
  seen: set[int] = set()
  stack = [tensor]
  while stack:
    op = graph.producer(stack.pop())
    if op is not None and op.index not in seen:
      seen.add(op.index)
      stack.extend(i for i in op.inputs if i >= 0)
  return seen


def weighted_ops_by_branch(graph) -> list:
  """The weighted operators in the Flax model's call order (module doc)."""
  from sdgan_jax.models import face_mesh  # pylint: disable=import-outside-toplevel

  by_width = {graph.shape(t)[-1]: t for t in graph.outputs}
  if sorted(by_width) != [1, face_mesh.NUM_LANDMARKS * 3]:
    raise ValueError(
      f'{graph.path.name}: outputs {[graph.shape(t) for t in graph.outputs]} '
      "are not the face mesh's 1,404 landmark values and one logit"
    )
  landmarks = _ancestors(graph, by_width[face_mesh.NUM_LANDMARKS * 3])
  presence = _ancestors(graph, by_width[1])

  def branch(op) -> int:
    return (
      0 if op.index in landmarks and op.index in presence else (1 if op.index in landmarks else 2)
    )

  ops = [op for op in graph.ops if op.kind in WEIGHTED]
  return sorted(ops, key=lambda op: (branch(op), op.index))


def convert(tflite_path: str | os.PathLike, model=None) -> dict:
  """Flax variables of ``FaceMeshNet`` (or ``model``, a variant) from ``face_landmark.tflite``."""
  from sdgan_jax.converters.tflite_file import TfliteModel  # pylint: disable=import-outside-toplevel
  from sdgan_jax.models import face_mesh  # pylint: disable=import-outside-toplevel

  model = model if model is not None else face_mesh.FaceMeshNet()
  size = face_mesh.INPUT_SIZE
  graph = TfliteModel(tflite_path)
  (inp,) = graph.inputs
  shape = (1, size, size, 3)
  if graph.shape(inp) != shape:
    raise ValueError(
      f'{pathlib.Path(tflite_path).name} takes {graph.shape(inp)}, not '
      f'{shape}: is it face_landmark.tflite?'
    )
  params = mediapipe_wheel.assign_layers(
    graph,
    weighted_ops_by_branch(graph),
    mediapipe_wheel.layer_calls(model, shape),
    mediapipe_wheel.expected_params(model, shape),
  )
  return {'params': params}


def fetch_and_convert(
  cache_dir: str | os.PathLike, weights_dir: str | os.PathLike | None = None
) -> pathlib.Path:
  """Downloads the pinned wheel, converts the model and saves it as ``NAME``."""
  from sdgan_jax.weights import save_weights  # pylint: disable=import-outside-toplevel

  path = fetch_file(SOURCE, cache_dir)
  metadata = provenance(
    SOURCE,
    path,
    f'{__name__}.convert',
    model='sdgan_jax.models.face_mesh.FaceMeshNet',
    input_range='[0, 1]',
  )
  return save_weights(NAME, convert(path), metadata, weights_dir)
