"""A trained EAGRNet face parser, restored from its workdir for inference (paper §3.2).

``TrainedParser.from_workdir(workdir)`` reads ``workdir/config.json`` and the latest (or a
given) checkpoint of a parser trained by ``sdgan_jax.train_parser`` and keeps its weights;
calling it maps uint8 crops to uint8 class-id maps (``faces.masks.SEMANTIC_CLASSES``).
``prepare_data.py --parser`` (``sdgan_jax.datasets.prepare``) and the anonymizer
(``sdgan_jax.semantic_source``) use it. Inference never imports the trainer: the
checkpoint is read in the layout its metadata records, so no optimizer has to be built to
describe it (as ``inference.TrainedGenerator`` does).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sdgan_jax import batching, inference
from sdgan_jax.config import ConfigError
from sdgan_jax.models import eagrnet
from sdgan_jax.networks import apply_with_stats, compute_dtype, split_variables
from sdgan_jax.perf import xla_options


def parser_network(config: ml_collections.ConfigDict) -> eagrnet.EAGRNet:
  """The EAGRNet of a parser config (``config.model``, ``num_classes``, ``dtype``)."""
  kwargs = {
    k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in config.model.to_dict().items()
  }
  return eagrnet.EAGRNet(num_classes=config.num_classes, dtype=compute_dtype(config), **kwargs)


def apply_parser(model: eagrnet.EAGRNet, params, stats, images, train: bool, rng=None):
  """``(outputs, stats)`` of ``model`` on float images in [0, 1]; dropout only when training
  with ``rng``."""
  rngs = {'dropout': rng} if train and rng is not None else {}
  return apply_with_stats(model.apply, params, stats, images, train=train, rngs=rngs)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, 'shape'))
  return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in leaves}


def _restore_weights(
  workdir: str, model: eagrnet.EAGRNet, resolution: int, step: int | None
) -> tuple[dict, dict, int]:
  """``(params, stats, step)`` of the latest (or ``step``'s) checkpoint of a parser workdir,
  checked against the shapes of ``model``."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  manager, step, target = inference.open_checkpoint(workdir, step)
  params, stats = jax.eval_shape(
    lambda: split_variables(
      model.init(jax.random.key(0), jnp.zeros((1, resolution, resolution, 3)), train=False)
    )
  )
  want = _shapes({'params': params, 'stats': stats})
  got = _shapes({'params': target.get('params'), 'stats': dict(target.get('stats') or {})})
  if got != want:
    first = next(
      f'{k}: {got.get(k)} stored, {want.get(k)} expected'
      for k in sorted(set(got) | set(want))
      if got.get(k) != want.get(k)
    )
    raise ConfigError(
      f'{workdir}: the checkpoint of step {step} does not hold the parser its '
      f'config.json describes ({first}); it was written with an older '
      'sdgan_jax: train the parser again in a fresh --workdir'
    )
  try:
    restored = manager.restore(step, args=ocp.args.StandardRestore(target))
  except Exception as e:  # pylint: disable=broad-except
    raise inference.damaged_checkpoint(workdir, step, e) from None
  return restored['params'], dict(restored.get('stats') or {}), int(step)


class TrainedParser:
  """A parser restored from a ``run.py`` workdir: uint8 crops -> uint8 class-id maps.

  Crops of another size than the parser's training resolution are resized to it, and the
  logits resized back (bilinear) before the argmax.

  Attributes:
    workdir, step: where and which checkpoint it came from.
    fingerprint: identifies the weights (workdir, step and a hash of the parameters), so
      a preparation made with other weights is not mistaken for this one.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    params,
    stats,
    *,
    workdir: str = '',
    step: int = 0,
    batch_size: int = 32,
  ):
    self.config, self.params, self.stats = config, params, stats
    self.workdir, self.step, self.batch_size = str(workdir), int(step), int(batch_size)
    self.model = parser_network(config)
    self.resolution = int(config.resolution)
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves((params, stats)):
      digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    self.fingerprint = f'{os.path.abspath(self.workdir)}@{self.step}:{digest.hexdigest()[:16]}'

    @xla_options.jit_network
    def predict(params, stats, images):
      n, h, w, _ = images.shape
      x = eagrnet.resize_bilinear(
        images.astype(jnp.float32) / 255.0, self.resolution, self.resolution
      )
      out, _ = apply_parser(self.model, params, stats, x, False)
      logits = eagrnet.resize_bilinear(out['parsing'], h, w)
      return jnp.argmax(logits, -1).astype(jnp.uint8)

    self._predict = predict

  @classmethod
  def from_workdir(
    cls, workdir: str | os.PathLike, step: int | None = None, batch_size: int = 32
  ) -> TrainedParser:
    path = pathlib.Path(workdir) / 'config.json'
    if not path.is_file():
      raise FileNotFoundError(
        f'{workdir} is not a parser workdir (no config.json): train one '
        'with `python run.py --config=configs/eagrnet_polygons.py '
        f'--workdir={workdir} ...`'
      )
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    if config.get('task') != 'parser':
      raise ValueError(
        f'{workdir} holds a {config.get("task", "sdgan")!r} run, not a face '
        "parser (config.task='parser', configs/eagrnet_*.py)"
      )
    params, stats, restored = _restore_weights(
      str(workdir), parser_network(config), int(config.resolution), step
    )
    return cls(config, params, stats, workdir=str(workdir), step=restored, batch_size=batch_size)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W] class ids of uint8 RGB crops [N, H, W, 3] (argmax of 'parsing')."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'expected uint8 RGB crops [N, H, W, 3], got shape {images.shape}')
    out = batching.map_batches(
      lambda chunk: self._predict(self.params, self.stats, chunk),
      images,
      batch_size=self.batch_size,
    )
    return np.zeros(images.shape[:3], np.uint8) if out is None else out
