"""A trained SDGAN generator, restored from a training workdir and compiled once (paper §3.4).

``TrainedGenerator.from_workdir(workdir)`` reads ``workdir/config.json`` and the latest (or a
given) orbax checkpoint, keeps the EMA generator weights, and loads the identity bank the
model was trained with (``workdir/identity_bank.npz``, which training writes, else the bank
named by the config), and the record of the semantic maps it was trained on
(``workdir/semantic_maps.json``, ``sdgan_jax.semantic_source``: landmark polygons or a face
parser's, paper §3.2). ``generate`` runs the generator on aligned crops in fixed-size batches
so that XLA compiles one program per (batch, resolution), whatever the number of faces.

No TensorFlow here: the anonymizer, the evaluation tool and the GPU benchmark import this.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sdgan_jax import batching, cpu_export, semantic_source
from sdgan_jax import identity_bank as bank_lib
from sdgan_jax.perf import xla_options

# orbax (here and in parser_inference.py) is imported where a checkpoint is opened, unlike on
# the training side: its imports take seconds (10.8 s on the loaded 2-core development
# machine), which the anonymizer's argument checks, its baselines and the CPU export never need.

BANK_FILENAME = 'identity_bank.npz'
# orbax logs this through absl for every step folder without its optional metadata file
# (checkpoints written by older orbax versions, or by hand): harmless for a restore. The
# second comes before the restore of a damaged checkpoint fails: the error says it.
_ORBAX_NOISE = ('Metadata file does not exist', 'Failed to get item metadata')


class _DropOrbaxNoise(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not any(text in record.getMessage() for text in _ORBAX_NOISE)


@contextlib.contextmanager
def quiet_orbax() -> Iterator[None]:
  """Silences orbax's ``_ORBAX_NOISE`` warnings (only those) inside."""
  noise = _DropOrbaxNoise()
  logger = logging.getLogger('absl')  # orbax logs through absl.logging
  logger.addFilter(noise)
  try:
    yield
  finally:
    logger.removeFilter(noise)


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
  """The steps saved under ``workdir/checkpoints``, oldest first."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  folder = os.path.join(os.path.abspath(os.fspath(workdir)), 'checkpoints')
  with quiet_orbax():
    return sorted(int(s) for s in ocp.CheckpointManager(folder).all_steps())


def load_workdir_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The config a training run saved beside its checkpoints."""
  path = pathlib.Path(workdir) / 'config.json'
  if not path.is_file():
    raise FileNotFoundError(
      f'{workdir} is not a training workdir (no config.json): train one with '
      f'`python run.py --config=configs/demo.py --workdir={workdir}`'
    )
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_workdir_bank(
  workdir: str | os.PathLike, config: ml_collections.ConfigDict
) -> bank_lib.IdentityBank:
  """The identity bank a run trained with: its copy in the workdir, else the config's."""
  copy = pathlib.Path(workdir) / BANK_FILENAME
  if copy.is_file():
    return bank_lib.IdentityBank.load(copy)
  data = config.get('data', {})
  path = data.get('identity_bank') or (
    data.get('dataset')
    and bank_lib.bank_path(
      data['dataset'], 'train', data.get('identity_backbone', bank_lib.DEFAULT_BACKBONE)
    )
  )
  if not path or not pathlib.Path(path).is_file():
    raise FileNotFoundError(
      f'no identity bank for {workdir}: neither {copy} nor the bank of its dataset '
      f'({path or "config.data.dataset is empty"}) exists; re-run '
      '`python tools/prepare_data.py ...` for that dataset'
    )
  return bank_lib.IdentityBank.load(path)


class TrainedGenerator:
  """The EMA generator of a training run, jitted: crops in, composited crops out.

  Attributes:
    config: the run's config. resolution, num_classes, identity_dim: its shapes.
    bank: the identity bank targets are drawn from (None if not loaded).
    step: the checkpoint's training step.
    workdir: the training workdir it was restored from (None when built otherwise).
    semantic_maps: the ``semantic_source.SemanticSource`` it was trained on (polygons
      unless its workdir records a face parser).
    params, stats: the EMA generator's parameters and statistics.
    generate_fn: the jitted (params, stats, image, mask, semantic, target_identity) ->
      composites, for callers that keep their arrays on the device.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    params: Any,
    stats: Any,
    *,
    bank: bank_lib.IdentityBank | None = None,
    step: int = 0,
    dtype: str | None = None,
    batch_size: int = 32,
    workdir: str | None = None,
    semantic_maps: semantic_source.SemanticSource | None = None,
  ):
    from sdgan_jax import networks as networks_lib  # pylint: disable=import-outside-toplevel

    config = ml_collections.ConfigDict(config.to_dict())
    if dtype is not None:
      config.dtype = dtype
    self.config = config
    self.resolution = int(config.resolution)
    self.num_classes = int(config.num_classes)
    self.identity_dim = int(config.identity_dim)
    self.bank = bank
    self.step = step
    self.batch_size = batch_size
    self.workdir = workdir
    self.semantic_maps = semantic_maps or semantic_source.SemanticSource()
    self.params = params
    self.stats = stats
    generator = networks_lib.Networks(config).generator
    per_image = networks_lib.per_image_statistics(config)

    def generate(params, stats, image, mask, semantic, target_identity):
      batch = dict(image=image, mask=mask, semantic=semantic, target_identity=target_identity)
      out, _ = networks_lib.generate(
        generator, params, stats, batch, self.num_classes, per_image=per_image
      )
      return jnp.clip(out.astype(jnp.float32), 0.0, 1.0)

    # (params, stats, image, mask, semantic, target_identity) -> composites, on device
    self.generate_fn = xla_options.jit_network(generate)
    # what ``generate`` calls: the same, or on a CPU its TensorFlow export (``cpu_export``)
    self.network = cpu_export.network('generator', 'generator', self.generate_fn, num_weights=2)

  @classmethod
  def from_workdir(
    cls,
    workdir: str | os.PathLike,
    step: int | None = None,
    *,
    dtype: str | None = None,
    batch_size: int = 32,
    load_bank: bool = True,
  ) -> TrainedGenerator:
    """Restores the latest (or ``step``'s) checkpoint of a ``run.py`` workdir."""
    workdir = os.path.abspath(os.fspath(workdir))  # orbax wants absolute paths
    config = load_workdir_config(workdir)
    semantic_maps = semantic_source.read_record(workdir)
    has_folder = (pathlib.Path(workdir) / 'checkpoints').is_dir()
    steps = checkpoint_steps(workdir) if has_folder else []
    if not steps:
      raise FileNotFoundError(
        f'no checkpoints in {workdir}: train with `python run.py --config=configs/demo.py '
        f'--workdir={workdir}`'
      )
    if step is not None and step not in steps:
      raise FileNotFoundError(
        f'{workdir} has no checkpoint at step {step}: available steps: '
        f'{", ".join(map(str, steps))} (leave out --step for the latest, {steps[-1]})'
      )
    with quiet_orbax():
      ema_params, stats, restored_step = _restore_ema_generator(workdir, step)
    bank = load_workdir_bank(workdir, config) if load_bank else None
    if bank is not None and bank.dim != int(config.identity_dim):
      raise ValueError(
        f'{workdir}: identity bank is {bank.dim}-d but the model takes '
        f'{config.identity_dim}-d identities'
      )
    return cls(
      config,
      ema_params,
      stats,
      bank=bank,
      step=int(restored_step),
      dtype=dtype,
      batch_size=batch_size,
      workdir=workdir,
      semantic_maps=semantic_maps,
    )

  def generate(self, image, mask, semantic, target_identity) -> np.ndarray:
    """De-identifies aligned crops (paper §3.4): the mask region is generated, the rest kept.

    Args:
      image: [N, R, R, 3] uint8 or float in [0, 1]. mask: [N, R, R(, 1)] (nonzero = face).
      semantic: [N, R, R(, 1)] integer class ids. target_identity: [N, D] features.

    Returns:
      float32 [N, R, R, 3] in [0, 1].
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
      image = image.astype(np.float32) / 255.0
    image = image.astype(np.float32)
    n = len(image)
    r = self.resolution
    if image.shape[1:] != (r, r, 3):
      raise ValueError(
        f"image must be [N, {r}, {r}, 3] (the model's resolution), got {image.shape}"
      )
    mask = (np.asarray(mask).reshape(n, r, r, 1) > 0).astype(np.float32)
    semantic = np.asarray(semantic).reshape(n, r, r).astype(np.int32)
    target = np.asarray(target_identity, np.float32).reshape(n, -1)
    if target.shape[1] != self.identity_dim:
      raise ValueError(f'target_identity must be [N, {self.identity_dim}], got {target.shape}')
    out = batching.map_batches(
      lambda *chunk: self.network(self.params, self.stats, *chunk),
      image,
      mask,
      semantic,
      target,
      batch_size=self.batch_size,
    )
    return np.zeros((0, r, r, 3), np.float32) if out is None else out


def open_checkpoint(workdir: str, step: int | None, config: str = '...') -> tuple[Any, int, Any]:
  """``(manager, step, stored)`` for the latest (or ``step``'s) checkpoint of ``workdir``:
  ``stored`` is its layout as ``ShapeDtypeStruct``s, read from its metadata.

  No checkpoint is a ``FileNotFoundError`` naming the command that trains one (``config``
  in it); unreadable metadata is ``damaged_checkpoint``'s one-line error.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(
      f'no checkpoint in {workdir}/checkpoints: train one with '
      f'`python run.py --config={config} --workdir={workdir}`'
    )
  try:  # a damaged checkpoint fails here already, before its layout is compared
    with quiet_orbax():
      stored = ocp.StandardCheckpointer().metadata(
        os.path.join(workdir, 'checkpoints', str(step), 'default')
      )
    stored = getattr(stored, 'item_metadata', None)
    if stored is None:  # orbax only warns
      raise ValueError('its _METADATA is not readable')
    stored = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype),
      dict(stored),
      is_leaf=lambda m: hasattr(m, 'shape'),
    )
  except Exception as e:  # pylint: disable=broad-except
    raise damaged_checkpoint(workdir, step, e) from None
  return manager, step, stored


def _restore_ema_generator(workdir: str, step: int | None) -> tuple[Any, Any, int]:
  """``(EMA generator params, their stats, step)`` of a training checkpoint.

  The whole stored state is read in the layout its metadata records, as plain nested
  dicts, so no other network (discriminator, identity net, VGG-16 as trained, optimizers)
  has to be built to describe it.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  manager, step, target = open_checkpoint(workdir, step, config='configs/demo.py')
  try:
    restored = manager.restore(step, args=ocp.args.StandardRestore(target))
    # the EMA's own statistics; checkpoints from before they were kept: the live generator's
    stats = restored.get('ema_stats') or restored['generator'].get('stats')
    return restored['ema_params'], dict(stats or {}), int(step)
  except Exception as e:  # pylint: disable=broad-except
    raise damaged_checkpoint(workdir, step, e) from None


class CheckpointError(ValueError):
  """A checkpoint that cannot be read (truncated or damaged files): one line, the fix."""


def damaged_checkpoint(workdir: str, step: int, error: BaseException) -> CheckpointError:
  """The one-line error for the unreadable checkpoint of ``step``, naming what to do."""
  text = str(error).strip()
  first = f'{type(error).__name__}: {text.splitlines()[0][:160] if text else ""}'.rstrip(': ')
  folder = os.path.join(workdir, 'checkpoints', str(step))
  others = [s for s in checkpoint_steps(workdir) if s != step]
  fallback = f'move {folder} away to use step {others[-1]}, or ' if others else ''
  return CheckpointError(
    f'the checkpoint {folder} cannot be read (truncated or damaged? {first}): {fallback}train again'
  )
