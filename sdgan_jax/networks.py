"""The SDGAN networks a config describes, and the generator's pass (paper §3.4).

``Networks(config)`` builds the four Flax modules of docs/network.md (generator,
discriminator, Siamese identity network, frozen VGG-16 for the perceptual loss) without
optimizers: training adds those (``sdgan_jax.train_step``), inference needs only
``generate``. Modules are built lazily, so a caller that runs only the generator builds
only the generator.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from sdgan_jax.models.discriminator import build_discriminator
from sdgan_jax.models.generator import composite, generator_from_config, mask_image
from sdgan_jax.models.identity import identity_from_config
from sdgan_jax.models.vgg import VGG16

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(config: ml_collections.ConfigDict):
  """``config.dtype`` as a JAX dtype: the networks compute in it, parameters stay float32."""
  dtype = DTYPES.get(config.get('dtype', 'float32'))
  if dtype is None:
    raise ValueError(
      f"unknown config key value dtype={config.dtype!r}: use 'float32' or 'bfloat16'"
    )
  return dtype


class Networks:
  """The generator, discriminator, identity network and VGG-16 of ``config.model``."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.dtype = compute_dtype(config)
    self.perceptual_tap = config.loss.get('perceptual_layer', 'relu3_3')

  @functools.cached_property
  def generator(self) -> nn.Module:
    return generator_from_config(
      ml_collections.ConfigDict(dict(self.config.model.generator, dtype=self.dtype))
    )

  @functools.cached_property
  def discriminator(self) -> nn.Module:
    kwargs = dict(self.config.model.discriminator)
    return build_discriminator(kwargs.pop('kind'), dtype=self.dtype, **kwargs)

  @functools.cached_property
  def identity(self) -> nn.Module:
    return identity_from_config(self.config.model.identity, self.dtype)

  @functools.cached_property
  def vgg(self) -> nn.Module:
    convention = self.config.loss.get('perceptual_input_convention', 'caffe')
    return VGG16(input_convention=convention, dtype=self.dtype)

  def build_all(self) -> Networks:
    """Builds every module now, so bad model keys fail here (config validation)."""
    for name in ('generator', 'discriminator', 'identity', 'vgg'):
      getattr(self, name)
    return self

  def vgg_features(self, vgg_params, images: jax.Array) -> jax.Array:
    """The frozen VGG-16's activations at the perceptual tap (eq. 7)."""
    return self.vgg.apply({'params': vgg_params}, images, taps=self.perceptual_tap)[
      self.perceptual_tap
    ]


def split_variables(variables) -> tuple[Any, Any]:
  """``(params, the other collections)`` of a module's variables."""
  variables = dict(variables)
  params = variables.pop('params')
  return params, variables


def apply_with_stats(apply_fn: Callable, params, stats, *args, train: bool = False, **kwargs):
  """``apply_fn`` (a module's ``apply``) on ``params`` and the other collections ``stats``,
  returning ``(output, stats)``; the statistics update only when training."""
  variables = {'params': params, **stats}
  if train and stats:
    return apply_fn(variables, *args, train=True, mutable=list(stats), **kwargs)
  return apply_fn(variables, *args, train=train, **kwargs), stats


def one_hot(semantic: jax.Array, num_classes: int) -> jax.Array:
  """The one-hot semantic map the networks take, from class ids [B, R, R]."""
  return jax.nn.one_hot(semantic, num_classes, dtype=jnp.float32)


NORM_STATISTICS = ('running', 'per_image')


def per_image_statistics(config: ml_collections.ConfigDict) -> bool:
  """``config.inference.norm_statistics`` (docs/training.md "Inference"): 'running'
  (default) normalises with the batch-norm running statistics at inference; 'per_image'
  with each image's own statistics, as the authors' demo does (it never switches the
  generator to evaluation mode and runs one image at a time)."""
  mode = config.get('inference', {}).get('norm_statistics', 'running')
  if mode not in NORM_STATISTICS:
    raise ValueError(
      f'config.inference.norm_statistics={mode!r}: use one of '
      f'{", ".join(map(repr, NORM_STATISTICS))}'
    )
  return mode == 'per_image'


def generate(
  generator: nn.Module,
  params,
  stats,
  batch: dict,
  num_classes: int,
  *,
  train: bool = False,
  per_image: bool = False,
) -> tuple[jax.Array, Any]:
  """Paper §3.4: G(masked image, semantic map, target identity), composited into the image.

  ``batch`` holds 'image' [B,R,R,3] in [0,1], 'mask' [B,R,R,1], 'semantic' [B,R,R] class
  ids and 'target_identity' [B,D]. Returns ``(composite, stats)``; the statistics advance
  only when ``train``. ``per_image`` (inference only, ``per_image_statistics``): batch
  norm uses each image's own statistics, the stored ones are neither read nor changed.
  """
  masked = mask_image(batch['image'], batch['mask'])
  onehot = one_hot(batch['semantic'], num_classes)
  if per_image and not train:

    def one(*inputs):  # a batch of one in training mode: its statistics are the image's
      raw, _ = apply_with_stats(
        generator.apply, params, stats, *(x[None] for x in inputs), train=True
      )
      return raw[0]

    raw = jax.vmap(one)(masked, onehot, batch['target_identity'])
    return composite(batch['image'], batch['mask'], raw), stats
  raw, new_stats = apply_with_stats(
    generator.apply, params, stats, masked, onehot, batch['target_identity'], train=train
  )
  return composite(batch['image'], batch['mask'], raw), new_stats


def example_batch(config: ml_collections.ConfigDict, batch_size: int = 1) -> dict:
  """A zero batch of the shapes ``config`` trains on (for initialisation and tracing)."""
  r = config.resolution
  return dict(
    image=jnp.zeros((batch_size, r, r, 3)),
    mask=jnp.zeros((batch_size, r, r, 1)),
    semantic=jnp.zeros((batch_size, r, r), jnp.int32),
    pair_image=jnp.zeros((batch_size, r, r, 3)),
    pair_same=jnp.zeros((batch_size,)),
    target_image=jnp.zeros((batch_size, r, r, 3)),
    target_identity=jnp.zeros((batch_size, config.identity_dim)),
  )


def init_generator(networks: Networks, rng: jax.Array) -> tuple[Any, Any]:
  """Fresh generator ``(params, stats)`` for ``networks.config``."""
  batch = example_batch(networks.config)
  return split_variables(
    networks.generator.init(
      rng,
      batch['image'],
      one_hot(batch['semantic'], networks.config.num_classes),
      batch['target_identity'],
    )
  )
