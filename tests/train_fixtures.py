"""A tiny training configuration and batch for the train-step tests (CPU, seconds per step)."""

import numpy as np

from sdgan_jax.configs import demo


def tiny_config(resolution: int = 32):
  """The demo's tiny variant (the smallest model one compiled train step of a CPU test fits)
  at ``resolution``, batch 4."""
  cfg = demo.get_config('tiny')
  cfg.resolution = resolution
  cfg.train.batch_size = 4
  return cfg


def shallow_config(resolution: int = 32):
  """``tiny_config`` with fewer layers: two SPADE ResBlks on each side of the generator
  (not four) and a three-layer discriminator (not five). For the train-step tests, whose
  assertions do not depend on the model's size: they spend their time compiling the step,
  and that scales with the number of layers, not their width."""
  cfg = tiny_config(resolution)
  cfg.model.generator.update(
    dict(
      encoder_features=(8, 16),
      encoder_downsample=(True, True),
      decoder_features=(16, 8),
      decoder_upsample=(True, True),
    )
  )
  cfg.model.discriminator.widths = (8, 16, 16)
  return cfg


def max_change(a, b) -> float:
  """The largest absolute difference between two pytrees of arrays, leaf by leaf."""
  import jax  # pylint: disable=import-outside-toplevel

  return max(
    float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
  )


def batch_for(cfg, seed: int = 0, batch_size: int | None = None) -> dict:
  """A batch in the input pipeline's format: random images, a centred square face mask."""
  rng = np.random.default_rng(seed)
  b, r = batch_size or cfg.train.batch_size, cfg.resolution
  mask = np.zeros((b, r, r, 1), np.float32)
  mask[:, r // 4 : 3 * r // 4, r // 4 : 3 * r // 4] = 1
  return dict(
    image=rng.uniform(size=(b, r, r, 3)).astype(np.float32),
    mask=mask,
    semantic=(rng.integers(1, cfg.num_classes, (b, r, r)) * mask[..., 0]).astype(np.int32),
    pair_image=rng.uniform(size=(b, r, r, 3)).astype(np.float32),
    pair_same=(np.arange(b) % 2).astype(np.float32),
    target_image=rng.uniform(size=(b, r, r, 3)).astype(np.float32),
    target_identity=rng.normal(size=(b, cfg.identity_dim)).astype(np.float32),
  )


def write_untrained_workdir(workdir, cfg, bank) -> str:
  """A ``run.py``-shaped workdir (config.json, identity bank, step-0 checkpoint) without
  training: what the anonymizer and eval tool read, in seconds instead of minutes.

  Untrained weights: tests on it may check plumbing, shapes and fail-closed behaviour, not
  image quality.
  """
  import os  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel

  from sdgan_jax import parallel, train_step, trainer  # pylint: disable=import-outside-toplevel
  from sdgan_jax.networks import Networks  # pylint: disable=import-outside-toplevel

  cfg = cfg.copy_and_resolve_references()
  cfg.loss.perceptual_weights = 'random'
  models = Networks(cfg)
  mesh = parallel.make_mesh()
  state = train_step.init_train_state(models, jax.random.key(cfg.seed), mesh)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(cfg.to_json_best_effort(indent=2))
  bank.save(os.path.join(workdir, 'identity_bank.npz'))
  manager = trainer.checkpoint_manager(cfg, workdir)
  trainer.save_checkpoint(manager, 0, state, None)
  manager.wait_until_finished()
  return str(workdir)


def patch_train_batches(monkeypatch, on_step):
  """Wraps the training input iterator so a test can act on the batch of a given step
  (0-based; batch k is read while step k - parallel.PREFETCH_BATCHES runs)."""
  from sdgan_jax import input_pipeline  # pylint: disable=import-outside-toplevel

  original = input_pipeline.train_iterator

  def patched(*args, **kwargs):
    for i, batch in enumerate(original(*args, **kwargs)):
      yield on_step(i + kwargs.get('start_step', 0), batch)

  monkeypatch.setattr(input_pipeline, 'train_iterator', patched)


def nan_pixel_at(step: int):
  """An ``on_step`` for ``patch_train_batches``: one NaN pixel in the batch of ``step``."""

  def poison(i, batch):
    if i == step:
      batch['image'] = batch['image'].copy()
      batch['image'][0, 0, 0, 0] = np.nan
    return batch

  return poison


def sigterm_at_read_of(step: int):
  """An ``on_step`` for ``patch_train_batches``: SIGTERM to this process when the batch of
  ``step`` is read."""
  import os  # pylint: disable=import-outside-toplevel
  import signal  # pylint: disable=import-outside-toplevel

  def preempt(i, batch):
    if i == step:
      os.kill(os.getpid(), signal.SIGTERM)
    return batch

  return preempt


def assert_same_replicated_state(direct, hosted):
  """``hosted`` (initialised on the host CPU, then placed) equals ``direct`` (initialised
  on the mesh): same values, dtypes and shardings, and a usable typed PRNG key."""
  import jax  # pylint: disable=import-outside-toplevel

  as_data = lambda s: s.replace(rng=jax.random.key_data(s.rng))
  leaves_d = jax.tree_util.tree_leaves(as_data(direct))
  leaves_h = jax.tree_util.tree_leaves(as_data(hosted))
  assert len(leaves_d) == len(leaves_h)
  for a, b in zip(leaves_d, leaves_h):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert b.sharding.is_equivalent_to(a.sharding, a.ndim)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert jax.dtypes.issubdtype(hosted.rng.dtype, jax.dtypes.prng_key)
