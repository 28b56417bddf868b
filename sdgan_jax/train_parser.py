"""EAGRNet face-parser training (paper §3.2).

SDGAN §3.2 takes its semantic maps from EAGRNet (Te et al., ECCV 2020) but gives no
training objective; the one here is EAGRNet's own, on the three outputs our model returns
(``sdgan_jax.models.eagrnet.EAGRNet``):

  L = CE(parsing) + w_aux CE(parsing_aux) + w_edge L_edge + w_boundary L_boundary

* CE(parsing): per-pixel cross-entropy of the final (edge-fused) logits;
* CE(parsing_aux): the same on the context way's logits (deep supervision of the decoder's
  first way, as EAGRNet's code does for its intermediate prediction);
* L_edge: the edge perceiving module's 2-class cross-entropy against the edges of the label
  map (``edge_labels_from_parsing``), class-balanced as in EAGRNet: edge pixels weighted by
  the non-edge share of the batch and vice versa, since edges are a few percent of pixels;
* L_boundary: EAGRNet's boundary-attention term, CE(parsing) averaged over the
  ground-truth edge pixels only, which is where parsers err.

``train_step(state, batch) -> (state, metrics)`` is one ``jax.jit`` program over the
'data' mesh of ``sdgan_jax.parallel`` (batch split with ``NamedSharding``, state replicated;
batch norm statistics are those of the global batch). Batch: 'image' f32 [B,R,R,3] in [0,1],
'semantic' int [B,R,R] class ids of ``masks.SEMANTIC_CLASSES``. The step itself needs
no TensorFlow; the training loop's input pipeline and summary writers do.

The trained parser for inference (``TrainedParser``) is ``sdgan_jax.parser_inference``,
which does not import this.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metric_writers
from flax.training import train_state

from sdgan_jax import input_pipeline, optimizers, parallel, trainer
from sdgan_jax.config import ConfigError
from sdgan_jax.datasets import parsing_batches
from sdgan_jax.datasets import parsing_folders as pf
from sdgan_jax.evaluation.segmentation import confusion_matrix, segmentation_metrics
from sdgan_jax.faces.masks import SEMANTIC_CLASSES
from sdgan_jax.models import eagrnet
from sdgan_jax.networks import split_variables
from sdgan_jax.parser_inference import apply_parser, parser_network
from sdgan_jax.perf import xla_options

BATCH_KEYS = ('image', 'semantic')
DATA_SOURCES = ('prepared', 'folder')


class ParserState(train_state.TrainState):
  """Everything parser training changes (flax ``TrainState`` plus the dropout key and
  ``stats``, the batch norm running statistics, {} without batch norm)."""

  rng: Any = None
  stats: Any = None


def learning_rate_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warm-up, then 'poly' (EAGRNet: (1 - t/T)^power), 'cosine' or 'constant'."""
  lr, warmup = optim.learning_rate, optim.get('warmup_steps', 0)
  decay_steps = max(num_steps - warmup, 1)
  kind = optim.get('schedule', 'poly')
  if kind == 'poly':
    main = optax.polynomial_schedule(lr, 0.0, optim.get('poly_power', 0.9), decay_steps)
  elif kind == 'cosine':
    main = optax.cosine_decay_schedule(lr, decay_steps)
  elif kind == 'constant':
    main = optax.constant_schedule(lr)
  else:
    raise ValueError(f"unknown config.optim.schedule {kind!r}: use 'poly', 'cosine' or 'constant'")
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


class ParserModels:
  """The network, learning-rate schedule, optimizer and loss weights of a parser config."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = parser_network(config)
    self.schedule = learning_rate_schedule(config.optim, config.train.num_steps)
    self.tx = optimizers.optimizer(config.optim, self.schedule, default='sgd', always_decay=True)
    self.loss = config.loss


def create_state(models: ParserModels, rng: jax.Array) -> ParserState:
  r = models.config.resolution
  k_init, k_state = jax.random.split(rng)
  params, stats = split_variables(models.model.init(k_init, jnp.zeros((1, r, r, 3)), train=False))
  return ParserState.create(
    apply_fn=models.model.apply, params=params, tx=models.tx, rng=k_state, stats=stats
  )


def _apply(models: ParserModels, params, stats, images, train: bool, rng=None):
  return apply_parser(models.model, params, stats, images, train, rng)


def parser_losses(outputs: dict, labels: jax.Array, weights) -> tuple[jax.Array, dict]:
  """EAGRNet's objective (module doc): (total, {term: value}).

  Args:
    outputs: the model's dict of logits, 'parsing' and 'parsing_aux' [B,H,W,C], 'edge'
      [B,H,W,2].
    labels: int [B,H,W] class ids.
    weights: mapping with 'aux_weight', 'edge_weight', 'boundary_weight'.
  """
  labels = labels.astype(jnp.int32)
  ce = optax.softmax_cross_entropy_with_integer_labels(outputs['parsing'], labels)
  terms = {'parsing': jnp.mean(ce)}
  if weights['aux_weight']:
    terms['aux'] = jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(outputs['parsing_aux'], labels)
    )
  edges = eagrnet.edge_labels_from_parsing(labels)
  edge_share = jnp.mean(edges.astype(jnp.float32))
  if weights['edge_weight']:
    pixel_w = jnp.where(edges == 1, 1.0 - edge_share, edge_share)
    edge_ce = optax.softmax_cross_entropy_with_integer_labels(outputs['edge'], edges)
    terms['edge'] = jnp.sum(pixel_w * edge_ce) / jnp.maximum(jnp.sum(pixel_w), 1e-8)
  if weights['boundary_weight']:
    on_edge = edges.astype(jnp.float32)
    terms['boundary'] = jnp.sum(on_edge * ce) / jnp.maximum(jnp.sum(on_edge), 1.0)
  total = terms['parsing']
  for name in ('aux', 'edge', 'boundary'):
    if name in terms:
      total = total + weights[f'{name}_weight'] * terms[name]
  return total, terms


def train_step(models: ParserModels, state: ParserState, batch: dict) -> tuple[ParserState, dict]:
  """One parser update on the objective of the module doc."""
  labels = batch['semantic'].astype(jnp.int32)
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    out, stats = _apply(models, params, state.stats, batch['image'], True, dropout_rng)
    total, terms = parser_losses(out, labels, models.loss)
    return total, (stats, terms, out['parsing'])

  (total, (stats, terms, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics = {f'train/{k}': v for k, v in terms.items()}
  metrics['train/loss'] = total
  metrics['train/pixel_accuracy'] = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  metrics['train/learning_rate'] = jnp.asarray(models.schedule(state.step), jnp.float32)
  metrics = {k: v.astype(jnp.float32) for k, v in metrics.items()}
  finite = jnp.all(jnp.stack([jnp.isfinite(v) for v in metrics.values()]))
  metrics['train/all_finite'] = finite.astype(jnp.float32)
  return state.apply_gradients(grads=grads, stats=stats), metrics


def jit_train_step(models: ParserModels, mesh: jax.sharding.Mesh) -> Callable:
  """``train_step`` jitted over ``mesh``: batch split on 'data', state replicated, donated."""
  return parallel.jit_step(functools.partial(train_step, models), mesh)


def init_state(
  models: ParserModels, rng: jax.Array, mesh: jax.sharding.Mesh, *, on_host: bool | None = None
) -> ParserState:
  """``create_state`` placed replicated as the train step returns it; on accelerators
  initialised on the host CPU (``parallel.init_replicated``)."""
  return parallel.init_replicated(
    functools.partial(create_state, models), mesh, rng, on_host=on_host
  )


# --------------------------------------------------------------------------------------
# Validation metric: mean IoU and pixel accuracy over the 11 classes.


def _batch_confusion(models: ParserModels, params, stats, images, labels, valid):
  out, _ = _apply(models, params, stats, images, False)
  weights = jnp.broadcast_to(valid[:, None, None], labels.shape)
  return confusion_matrix(
    labels, jnp.argmax(out['parsing'], -1), models.config.num_classes, weights
  )


def evaluate(
  models: ParserModels,
  state: ParserState,
  batches: Iterable[dict],
  confusion_fn: Callable | None = None,
) -> dict[str, float]:
  """Segmentation metrics of the parser on ``batches`` ('image', 'semantic', 'valid'): each
  process runs its own batches on its local copy of the parser, and the confusion matrices
  are summed over processes."""
  c = models.config.num_classes
  confusion_fn = confusion_fn or xla_options.jit_network(
    functools.partial(_batch_confusion, models)
  )
  params, stats = parallel.local_copy((state.params, state.stats))
  total = np.zeros((c, c))
  for batch in batches:  # this process's share of the split
    valid = np.asarray(batch.get('valid', np.ones(len(batch['image']))), np.float32)
    total += np.asarray(
      confusion_fn(params, stats, batch['image'], np.asarray(batch['semantic'], np.int32), valid)
    )
  total = parallel.sum_over_processes(total)
  names = SEMANTIC_CLASSES if c == len(SEMANTIC_CLASSES) else None
  return segmentation_metrics(total, names) if total.sum() else {}


# --------------------------------------------------------------------------------------
# Config, checkpoints, data.


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails before any device work on unknown keys (those of
  ``sdgan_jax/configs/eagrnet_folder.py``, which extends the polygon config and so holds
  them all), inconsistent values or a missing data folder (``ConfigError``)."""
  trainer.check_keys(
    config, trainer.reference_config('eagrnet_folder'), free_form=frozenset({'model'})
  )
  if config.get('task') != 'parser':
    raise ConfigError(f"config.task={config.get('task')!r}: parser configs set task='parser'")
  if config.data.source not in DATA_SOURCES:
    raise ConfigError(
      f'unknown config.data.source {config.data.source!r}: use one of {DATA_SOURCES}'
    )
  where = config.data.dataset if config.data.source == 'prepared' else config.data.folder
  if not where:
    key = 'dataset' if config.data.source == 'prepared' else 'folder'
    what = (
      'a dataset of tools/prepare_data.py'
      if key == 'dataset'
      else 'a CelebAMask-HQ or LaPa root folder'
    )
    raise ConfigError(f'config.data.{key} is empty: pass --config.data.{key}=PATH ({what})')
  if config.data.source == 'prepared':
    trainer.check_dataset(config.data.dataset)
  elif not os.path.isdir(config.data.folder):
    raise ConfigError(
      f'config.data.folder={config.data.folder!r} is not a folder: pass '
      'the CelebAMask-HQ or LaPa root (--config.data.folder=PATH)'
    )
  if config.resolution % 8 or config.resolution <= 0:
    raise ConfigError(f'config.resolution={config.resolution}: must be a positive multiple of 8')
  trainer.as_config_error(lambda: ParserModels(config))  # model and optimizer keys


def _data(config):
  """(training batch iterator factory, evaluation batch factory or None, resolution check)."""
  data = config.data
  if data.source == 'prepared':
    source = input_pipeline.load_data_source(data.dataset, 'train')
    info = getattr(source, 'dataset_info', None)
    if info is not None and info.features['image'].shape[0] < config.resolution:
      raise ValueError(
        f'config.resolution={config.resolution} exceeds the prepared crops '
        f'({info.features["image"].shape[0]} px) of {data.dataset}'
      )
    augmentation = input_pipeline.Augmentation() if data.augment else input_pipeline.NO_AUGMENTATION

    def train_batches(start_step):
      return input_pipeline.train_iterator(
        source,
        batch_size=config.train.batch_size,
        resolution=config.resolution,
        seed=config.seed,
        start_step=start_step,
        augmentation=augmentation,
      )

    try:
      eval_source = input_pipeline.load_data_source(data.dataset, data.eval_split)
    except (KeyError, ValueError, FileNotFoundError):
      logging.warning('no %r split in %s: no validation metric', data.eval_split, data.dataset)
      return train_batches, None

    def eval_batches():
      batches = input_pipeline.eval_iterator(
        eval_source, batch_size=config.train.batch_size, resolution=config.resolution
      )
      return (b for _, b in zip(range(config.eval.num_batches), batches))

    return train_batches, eval_batches

  kwargs = dict(layout=data.layout, sides=data.sides, holdout=data.holdout)
  folder = pf.ParsingFolder(data.folder, data.train_split, **kwargs)
  logging.info(
    'parsing folder %s (%s layout): %d training images', data.folder, folder.layout, len(folder)
  )

  def folder_train_batches(start_step):
    return parsing_batches.train_batches(
      folder,
      batch_size=config.train.batch_size,
      resolution=config.resolution,
      seed=config.seed,
      start_step=start_step,
      flip_prob=0.5 if data.augment else 0.0,
    )

  try:
    eval_folder = pf.ParsingFolder(data.folder, data.eval_split, **kwargs)
  except (pf.LayoutError, ValueError) as e:
    logging.warning(
      'no validation split %r in %s (%s): no validation metric', data.eval_split, data.folder, e
    )
    return folder_train_batches, None
  return folder_train_batches, lambda: parsing_batches.eval_batches(
    eval_folder,
    batch_size=config.train.batch_size,
    resolution=config.resolution,
    max_batches=config.eval.num_batches,
  )


# --------------------------------------------------------------------------------------
# The training loop.


def build_programs(config: ml_collections.ConfigDict) -> tuple:
  """``(models, mesh, init_fn, step_fn, confusion_fn)`` of a run: the parser of ``config``,
  the 'data' mesh over every device, and the jitted initialiser (rng -> replicated state),
  train step and validation confusion matrix."""
  models = ParserModels(config)
  mesh = parallel.make_mesh()
  init_fn = functools.partial(
    parallel.init_replicated, functools.partial(create_state, models), mesh
  )
  return (
    models,
    mesh,
    init_fn,
    jit_train_step(models, mesh),
    xla_options.jit_network(functools.partial(_batch_confusion, models)),
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> ParserState:
  """Trains EAGRNet on ``config.data``; resumes from the latest checkpoint in ``workdir``."""
  workdir = trainer.absolute_workdir(workdir)
  validate_config(config)  # before any data is read or any program compiled: fails fast

  train_batches, eval_batches = _data(config)
  models, mesh, init_fn, step_fn, confusion_fn = build_programs(config)
  state = init_fn(jax.random.key(config.seed))
  manager = trainer.checkpoint_manager(config, workdir, track_best=eval_batches is not None)
  state, initial_step = trainer.resume_or_start(manager, workdir, state, config)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)

  def evaluate_and_log(state):
    metrics = evaluate(models, state, eval_batches(), confusion_fn) if eval_batches else {}
    if metrics:
      logging.info(
        'mIoU %.4f, pixel accuracy %.4f', metrics['eval/miou'], metrics['eval/pixel_accuracy']
      )
    return metrics

  state, _ = trainer.run_training_loop(
    state,
    step_fn,
    parallel.prefetch_to_mesh(train_batches(initial_step), mesh, BATCH_KEYS),
    config=config,
    workdir=workdir,
    manager=manager,
    writer=writer,
    initial_step=initial_step,
    evaluate=evaluate_and_log,
    failure='parser loss',
    hint='lower config.optim.learning_rate or check the label maps',
  )
  return state
