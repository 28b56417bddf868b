"""Small SDGAN for the embedded sample faces: runs on a CPU in minutes.

  python run.py --config=configs/demo.py --workdir=workdirs/demo

Same structure as configs/celeba.py at 64 px with narrower networks. ``get_config('tiny')``
(``--config=configs/demo.py:tiny``) is narrower still at 32 px, one G update a step: the
CPU-sized model of the tests and of ``tools/benchmark.py --preset small``.
"""

import ml_collections

from sdgan_jax.configs import celeba


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  if variant not in ('', 'tiny'):
    raise ValueError(f"unknown demo config variant {variant!r}: use '' or 'tiny'")
  config = celeba.get_config('64')
  config.identity_dim = 128
  config.model.generator = ml_collections.ConfigDict(
    {
      'preset': 'paper',
      'stem_features': 16,
      'encoder_features': (32, 64, 64, 64),
      'bottleneck_features': 64,
      'bottleneck_blocks': 2,
      'decoder_features': (64, 64, 32, 16),
      'spade_hidden': 32,
    }
  )
  config.model.identity.num_identities = 8
  config.model.identity.embed_dim = 128
  # Narrow identity net and discriminator too: at the CelebA widths they took most of a
  # CPU step.
  config.model.identity.width = 16
  config.model.discriminator = ml_collections.ConfigDict(
    {'kind': 'global', 'widths': (32, 64, 128, 128, 128), 'hidden': 256}
  )
  config.train.batch_size = 8
  # One batch for all updates of a step: the demo's ~40 crops hold few batches, and on a
  # CPU every extra batch is input work and generator forward passes.
  config.train.fresh_batches = False
  # A few hundred steps, not 200k: a faster learning rate, and an EMA that forgets the random
  # initialisation within them (0.999 would still be ~80% initial weights after 200 steps).
  config.optim.learning_rate = 4e-4
  config.train.ema_decay = 0.95
  if variant == 'tiny':
    config.resolution = 32
    config.model.generator.update(
      dict(
        stem_features=8,
        encoder_features=(8, 16, 16, 16),
        bottleneck_features=16,
        bottleneck_blocks=1,
        decoder_features=(16, 16, 8, 8),
        spade_hidden=8,
      )
    )
    config.model.identity.width = 8
    config.model.identity.embed_dim = 16
    config.model.discriminator = dict(kind='global', widths=(8, 16, 16, 16, 16), hidden=16)
    config.train.g_steps = 1
  return config
