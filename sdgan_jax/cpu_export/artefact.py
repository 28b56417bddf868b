"""A Flax network's inference, exported to a TensorFlow SavedModel and cached by checksum.

The Flax module stays the one definition: ``export`` traces the (unjitted) apply function
on example inputs, writes the trace out as TensorFlow ops (``lowering``) with the weights as
variables, and saves it under the cache folder, named by the SHA-256 of everything that
decides the graph: the traced program (its text holds every shape and dtype), the weights'
bytes, the matrix-product dtype and the lowering's and TensorFlow's versions. A later run
with the same network, weights and shapes loads the saved graph instead of lowering again;
any change gives a new name. Nothing in the cache is written by hand.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from sdgan_jax.cpu_export import lowering

PRECISIONS = ('float32', 'bfloat16')
_LOCK = threading.Lock()


def cache_dir() -> pathlib.Path:
  """``$SDGAN_CPU_EXPORT_CACHE``, else ``~/.cache/sdgan_jax/cpu_export``."""
  return pathlib.Path(
    os.environ.get('SDGAN_CPU_EXPORT_CACHE')
    or pathlib.Path.home() / '.cache' / 'sdgan_jax' / 'cpu_export'
  )


def checksum(closed_jaxpr, leaves: Sequence[np.ndarray], precision: str) -> str:
  """SHA-256 of the program text, the weights and the precision and versions."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  digest = hashlib.sha256()
  for part in (
    f'lowering {lowering.VERSION}',
    f'tensorflow {tf.__version__}',
    precision,
    str(closed_jaxpr),
  ):
    digest.update(part.encode())
    digest.update(b'\0')
  for leaf in leaves:
    leaf = np.ascontiguousarray(leaf)
    digest.update(f'{leaf.dtype}{leaf.shape}'.encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


class Exported:
  """The exported network: ``exported(*inputs)`` -> its outputs as numpy arrays, in the
  structure the Flax function returns (the weights are inside).

  Attributes:
    path: the SavedModel folder. precision: 'float32' or 'bfloat16' (matrix products).
    loaded: True when the graph came from the cache rather than a fresh lowering.
  """

  def __init__(
    self, function, out_tree, path: pathlib.Path, precision: str, loaded: bool, holder=None
  ):
    self._function = function
    self._out_tree = out_tree
    self._holder = holder  # keeps the loaded module (and its variables) alive
    self.path = path
    self.precision = precision
    self.loaded = loaded

  def __call__(self, *inputs):
    outs = self._function(*[np.asarray(x) for x in inputs])
    return jax.tree_util.tree_unflatten(self._out_tree, [o.numpy() for o in outs])


def export(
  fn: Callable,
  params: Any,
  example_inputs: Sequence[Any],
  precision: str = 'float32',
  name: str = 'network',
  folder: str | os.PathLike | None = None,
) -> Exported:
  """``fn(params, *inputs)`` exported for inputs shaped and typed like ``example_inputs``.

  Args:
    fn: the network's apply function (plain, not jitted: jitted ones pass ``__wrapped__``).
    params: its weights (a pytree of arrays), stored in the SavedModel.
    example_inputs: arrays (or ``jax.ShapeDtypeStruct``) giving the fixed input shapes.
    precision: 'float32', or 'bfloat16' for the operands of convolutions and matrix
      products (accumulated and returned in float32).
    name: the cache folder's prefix. folder: the cache (default ``cache_dir()``).

  Raises:
    lowering.UnsupportedPrimitive: the network uses a primitive the lowering lacks.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  if precision not in PRECISIONS:
    raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
  specs = [
    jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
    if not isinstance(x, jax.ShapeDtypeStruct)
    else x
    for x in example_inputs
  ]
  closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(params, *specs)
  lowering.check(closed)
  out_tree = jax.tree_util.tree_structure(out_shape)
  leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]
  key = checksum(closed, leaves, precision)
  path = pathlib.Path(folder or cache_dir()) / f'{name}-{precision}-{key[:24]}'
  signature = [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype)) for s in specs]
  with _LOCK:
    if (path / 'saved_model.pb').is_file():
      module = tf.saved_model.load(str(path))
      return Exported(module.run, out_tree, path, precision, True, holder=module)
    module = tf.Module()
    module.weights = [tf.Variable(x, trainable=False) for x in leaves]
    matmul_dtype = tf.bfloat16 if precision == 'bfloat16' else tf.float32

    @tf.function(input_signature=signature, autograph=False)
    def run(*inputs):
      return lowering.lower(closed, list(module.weights) + list(inputs), matmul_dtype)

    module.run = run
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f'.{path.name}-', dir=path.parent))
    try:
      tf.saved_model.save(module, str(staging))
      if not path.exists():  # another process may have written the same artefact
        os.replace(staging, path)
    finally:
      shutil.rmtree(staging, ignore_errors=True)
    return Exported(run, out_tree, path, precision, False, holder=module)
