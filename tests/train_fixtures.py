"""A tiny training configuration and batch for the train-step tests (CPU, seconds per step)."""

import numpy as np

from configs import demo


def tiny_config(resolution: int = 32):
  """The demo config shrunk so that one compiled train step fits a CPU test."""
  cfg = demo.get_config()
  cfg.resolution = resolution
  cfg.model.generator.update(dict(stem_features=8, encoder_features=(8, 16, 16, 16),
                                  bottleneck_features=16, bottleneck_blocks=1,
                                  decoder_features=(16, 16, 8, 8), spade_hidden=8))
  cfg.model.identity.width = 8
  cfg.model.identity.embed_dim = 16
  cfg.model.discriminator = dict(kind='global', widths=(8, 16, 16, 16, 16), hidden=16)
  cfg.train.g_steps = 1
  cfg.train.batch_size = 4
  return cfg


def batch_for(cfg, seed: int = 0, batch_size: int | None = None) -> dict:
  """A batch in the input pipeline's format: random images, a centred square face mask."""
  rng = np.random.default_rng(seed)
  b, r = batch_size or cfg.train.batch_size, cfg.resolution
  mask = np.zeros((b, r, r, 1), np.float32)
  mask[:, r // 4:3 * r // 4, r // 4:3 * r // 4] = 1
  return dict(
      image=rng.uniform(size=(b, r, r, 3)).astype(np.float32), mask=mask,
      semantic=(rng.integers(1, cfg.num_classes, (b, r, r)) * mask[..., 0]).astype(np.int32),
      pair_image=rng.uniform(size=(b, r, r, 3)).astype(np.float32),
      pair_same=(np.arange(b) % 2).astype(np.float32),
      target_identity=rng.normal(size=(b, cfg.identity_dim)).astype(np.float32))
