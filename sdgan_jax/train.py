"""The SDGAN trainer: ``train_and_evaluate(config, workdir)``, what ``run.py`` runs.

It checks the config and the prepared dataset before any device work, builds the networks
(``sdgan_jax.networks``) and their state (``sdgan_jax.train_step``) replicated on the
device mesh (``sdgan_jax.parallel``), feeds the input pipeline's batches with each
example's target identity from the identity bank, and runs the shared loop
(``sdgan_jax.trainer``): metrics, image summaries, validation (SSIM/PSNR of the EMA
generator) and orbax checkpoints. docs/training.md describes the step and its schedule.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator

import dm_pix
import jax
import ml_collections
import numpy as np
from clu import metric_writers
from google.protobuf import json_format

from sdgan_jax import identity_bank as bank_lib
from sdgan_jax import input_pipeline, losses, optimizers, parallel, semantic_source, trainer
from sdgan_jax import weights as weights_lib
from sdgan_jax.config import ConfigError
from sdgan_jax.datasets.features import NUM_CLASSES
from sdgan_jax.network_updates import judges_train
from sdgan_jax.networks import Networks, generate, per_image_statistics
from sdgan_jax.perf import xla_options
from sdgan_jax.train_step import (
  BATCH_KEYS,
  TrainState,
  batch_partition,
  batch_slots,
  init_train_state,
  jit_train_step,
)

# Range checks of integer config keys: 'group.key' -> the least value.
_AT_LEAST = {
  'train.batch_size': 1,
  'train.num_steps': 0,
  'train.log_every': 1,
  'checkpoint.every': 1,
  'eval.num_batches': 0,
}


# ``config.data.augmentation`` and ``config.data.sampling``: the input pipeline's choices.
AUGMENTATIONS = tuple(input_pipeline.augment.PRESETS)
SAMPLINGS = input_pipeline.plan.SAMPLINGS


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails before any device work on keys this code does not know (those of
  ``sdgan_jax/configs/celeba.py``) or inconsistent values (``ConfigError``)."""
  trainer.check_keys(
    config, trainer.reference_config('celeba'), free_form=frozenset({'model', 'data'})
  )  # networks check their own
  if config.resolution % 16 or config.resolution <= 0:
    raise ConfigError(f'config.resolution={config.resolution}: must be a positive multiple of 16')
  trainer.check_at_least(config, _AT_LEAST)
  trainer.as_config_error(lambda: optimizers.optimizer(config.optim))
  trainer.as_config_error(lambda: judges_train(config))
  trainer.as_config_error(lambda: per_image_statistics(config))
  feature = config.data.get('target_feature', 'image')
  if feature not in TARGET_FEATURES:
    raise ConfigError(
      f'config.data.target_feature={feature!r}: use one of {", ".join(map(repr, TARGET_FEATURES))}'
    )
  sampling = config.data.get('sampling', 'epoch')
  if sampling not in SAMPLINGS:
    raise ConfigError(
      f'config.data.sampling={sampling!r}: use one of {", ".join(map(repr, SAMPLINGS))}'
    )
  augmentation = config.data.get('augmentation', 'shift_flip')
  if augmentation not in AUGMENTATIONS:
    raise ConfigError(
      f'config.data.augmentation={augmentation!r}: use one of {", ".join(map(repr, AUGMENTATIONS))}'
    )
  trainer.as_config_error(lambda: Networks(config).build_all())


TARGET_FEATURES = ('image', 'identity_mean')


def with_target_identities(batches: Iterable[dict], bank, feature: str = 'image') -> Iterator[dict]:
  """Adds ``target_identity`` to each host batch: the identity feature (paper §3.3) of the
  target the batch carries (drawn by the input pipeline from the other identities), so the
  feature G gets and the image its identity term pulls towards show the same person.

  ``feature`` (``config.data.target_feature``, docs/training.md): 'image', the target
  image's own feature (``bank.features[target_index]``; the paper's refined per-image
  feature F1, its best ablation row V6, as the authors' code), or 'identity_mean', the mean
  feature of the target's identity (``bank.means[target_label]``).
  """
  if feature not in TARGET_FEATURES:
    raise ValueError(f'target feature {feature!r}: use one of {TARGET_FEATURES}')
  if feature == 'image' and bank.features is None:
    raise ValueError(
      'the identity bank holds no per-example features (built by an older '
      'version): rebuild it with tools/prepare_data.py, or set '
      "config.data.target_feature='identity_mean'"
    )
  table, key = (
    (bank.features, 'target_index') if feature == 'image' else (bank.means, 'target_label')
  )
  for batch in batches:
    rows = np.asarray(batch[key])
    if rows.size and (rows.min() < 0 or rows.max() >= len(table)):
      raise ValueError(
        f'{key} in [{rows.min()}, {rows.max()}] but the identity bank holds '
        f'{len(table)} rows: rebuild the bank for this dataset '
        '(tools/prepare_data.py)'
      )
    batch['target_identity'] = table[rows]
    yield batch


@functools.lru_cache(maxsize=8)
def _inference_fns(networks: Networks) -> tuple[Callable, Callable]:
  """The EMA generator's validation and summary programs, jitted once per ``Networks``
  (a new ``jax.jit`` per call would recompile the generator at every evaluation)."""

  per_image = per_image_statistics(networks.config)

  def composites(ema_params, stats, batch):
    return generate(
      networks.generator, ema_params, stats, batch, networks.config.num_classes, per_image=per_image
    )[0]

  def quality(ema_params, stats, batch):
    out = composites(ema_params, stats, batch)
    return losses.ssim(out, batch['image']), dm_pix.psnr(out, batch['image'])

  return xla_options.jit_network(quality), xla_options.jit_network(composites)


def _eval_metrics(networks, state, eval_batches, bank, seed) -> dict:
  """Validation: SSIM and PSNR of the EMA generator's composites against the originals,
  averaged over every process's share of the split."""
  per_image, _ = _inference_fns(networks)
  params = parallel.local_copy((state.ema_params, state.ema_stats))
  totals = np.zeros(3)  # sum of SSIM, sum of PSNR, images
  for i, batch in enumerate(eval_batches):
    valid = np.asarray(batch['valid'], bool)
    # test identities are not in the (training) bank: any bank identity is another person
    picks = np.random.default_rng([seed, i, jax.process_index()]).integers(
      0, bank.num_identities, len(valid)
    )
    inputs = {k: batch[k] for k in ('image', 'mask', 'semantic')}
    inputs['target_identity'] = bank.means[picks]
    s, p = per_image(*params, inputs)
    totals += [np.sum(np.asarray(s)[valid]), np.sum(np.asarray(p)[valid]), valid.sum()]
  ssim_sum, psnr_sum, count = parallel.sum_over_processes(totals)
  if not count:
    return {}
  return {'eval/ssim': float(ssim_sum / count), 'eval/psnr': float(psnr_sum / count)}


def _image_summary(networks, state, batch, n: int) -> dict:
  """Input, mask, semantic map, target-conditioned output (EMA G) side by side."""

  slotted = batch_slots(networks.config.train) > 1
  small = {
    k: (np.asarray(v)[0] if slotted else np.asarray(v))[:n]
    for k, v in batch.items()
    if k in ('image', 'mask', 'semantic', 'target_identity')
  }
  out = _inference_fns(networks)[1](
    *parallel.local_copy((state.ema_params, state.ema_stats)), small
  )
  palette = np.random.default_rng(0).uniform(0.2, 1.0, (max(NUM_CLASSES, 32), 3))
  palette[0] = 0
  semantic = palette[small['semantic']]
  return {
    'images/input_mask_semantic_output': np.concatenate(
      [small['image'], np.repeat(small['mask'], 3, -1), semantic, np.asarray(out)], axis=2
    )
  }


def _training_source(config):
  """The prepared dataset's training split, checked against the config."""

  dataset = config.data.dataset
  try:
    source = input_pipeline.load_data_source(dataset, 'train')
  except (FileNotFoundError, ValueError, KeyError, json_format.Error) as e:
    if not (pathlib.Path(dataset) / 'dataset_info.json').is_file():  # a TFDS name
      raise ConfigError(
        f'config.data.dataset={dataset!r}: no such directory, nor a prepared '
        'TFDS dataset; pass the directory tools/prepare_data.py printed'
      ) from e
    cause = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise ConfigError(
      f'config.data.dataset={dataset!r}: its training split cannot be read '
      f'({type(e).__name__}: {cause}); prepare the dataset again with '
      'tools/prepare_data.py'
    ) from e
  if config.num_classes != NUM_CLASSES:
    raise ConfigError(
      f'config.num_classes={config.num_classes} but prepared datasets have '
      f'{NUM_CLASSES} semantic classes'
    )
  info = getattr(source, 'dataset_info', None)
  if info is not None and info.features['image'].shape[0] < config.resolution:
    raise ConfigError(
      f'config.resolution={config.resolution} exceeds the prepared crops '
      f'({info.features["image"].shape[0]} px); prepare the data at '
      f'{config.resolution} px'
    )
  return source


def _identity_bank(config):
  """The training split's identity bank (paper §3.3), checked against ``identity_dim``."""

  bank_file = config.data.identity_bank or bank_lib.bank_path(
    config.data.dataset, 'train', config.data.identity_backbone
  )
  try:
    bank = bank_lib.IdentityBank.load(bank_file)
  except FileNotFoundError as e:
    raise ConfigError(
      f'no identity bank at {bank_file}: prepare the dataset with '
      'tools/prepare_data.py (without --identity_bank none), or pass '
      '--config.data.identity_bank=PATH'
    ) from e
  if bank.dim != config.identity_dim:
    raise ConfigError(
      f'config.identity_dim={config.identity_dim} but the identity bank holds '
      f'{bank.dim}-d features ({bank.backbone}); set identity_dim to {bank.dim}'
    )
  if config.data.get('target_feature', 'image') == 'image' and bank.features is None:
    raise ConfigError(
      f'{bank_file} holds no per-example features (built by an older '
      'version): rebuild it with tools/prepare_data.py, or pass '
      '--config.data.target_feature=identity_mean'
    )
  return bank


def _evaluation(config, networks, bank) -> Callable | None:
  """``evaluate(state) -> metrics`` on the test split, or None without one."""

  if not config.eval.num_batches:
    return None
  try:
    source = input_pipeline.load_data_source(config.data.dataset, 'test')
  except (KeyError, ValueError, FileNotFoundError):
    logging.warning('no test split in %s: no validation metric', config.data.dataset)
    return None

  def evaluate(state):
    batches = input_pipeline.eval_iterator(
      source, batch_size=config.train.batch_size, resolution=config.resolution
    )
    batches = (b for _, b in zip(range(config.eval.num_batches), batches))
    return _eval_metrics(networks, state, batches, bank, config.seed)

  return evaluate


def _write_workdir_records(workdir: str, config, bank) -> None:
  """What inference needs beside the checkpoints (``sdgan_jax.inference``): the bank the
  model trained with, so targets are drawn from it, and the kind of semantic maps."""

  if jax.process_index() == 0:
    # the means only: the anonymizer draws whole identities; per-example rows are training's
    dataclasses.replace(bank, features=None).save(os.path.join(workdir, 'identity_bank.npz'))
    semantic_source.record_training_maps(workdir, config.data.dataset)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains SDGAN on the prepared dataset of ``config.data``; resumes from ``workdir``."""
  validate_config(config)  # before any data is read or any program compiled: fails fast
  trainer.check_dataset(config.data.dataset)

  workdir = trainer.absolute_workdir(workdir)
  source, bank = _training_source(config), _identity_bank(config)
  perceptual = None
  if config.loss.perceptual_weights != 'random':
    perceptual = weights_lib.load_weights(config.loss.perceptual_weights)['params']
  networks, mesh = Networks(config), parallel.make_mesh()
  state = init_train_state(networks, jax.random.key(config.seed), mesh, perceptual)
  evaluate = _evaluation(config, networks, bank)
  manager = trainer.checkpoint_manager(config, workdir, track_best=evaluate is not None)
  state, initial_step = trainer.resume_or_start(manager, workdir, state, config)
  _write_workdir_records(workdir, config, bank)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  host_batches = input_pipeline.train_iterator(
    source,
    batch_size=config.train.batch_size,
    resolution=config.resolution,
    seed=config.seed,
    start_step=initial_step,
    slots=batch_slots(config.train),
    sampling=config.data.get('sampling', 'epoch'),
    augmentation=input_pipeline.augment.PRESETS[config.data.get('augmentation', 'shift_flip')],
  )
  batches = parallel.prefetch_to_mesh(
    with_target_identities(host_batches, bank, config.data.get('target_feature', 'image')),
    mesh,
    BATCH_KEYS,
    batch_partition(config.train),
  )
  state, step = trainer.run_training_loop(
    state,
    jit_train_step(networks, mesh),
    batches,
    config=config,
    workdir=workdir,
    manager=manager,
    writer=writer,
    initial_step=initial_step,
    evaluate=evaluate or (lambda _: {}),
    images=lambda state, batch: _image_summary(networks, state, batch, 4),
    failure='loss',
    hint='lower the learning rate or check the data',
  )
  checksum = sum(
    float(np.sum(np.asarray(x.addressable_data(0), np.float64)))
    for x in jax.tree_util.tree_leaves(state.generator.params)
  )
  logging.info(
    'process %d: finished at step %d, generator parameter checksum %.10e',
    jax.process_index(),
    step,
    checksum,
  )
  return state
