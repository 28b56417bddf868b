"""Siamese identity network of the contrastive loss (paper §3.4, eq. 8).

A ResNet-18 trunk -> global average pool (512) -> an embedding head; the contrastive loss
compares the embeddings of image pairs. Two presets (``identity_from_config``):

* 'resnet18' (default): torchvision's trunk (7x7/2 stem + max-pool), images ImageNet-
  normalised, a linear 1024-d embedding and a linear 1200-way identity head on top of it.
  12,931,824 parameters.
* 'authors': the authors' released Siamese network: the CIFAR-style trunk (3x3/1 stem, no
  max-pool), images in [0, 1] as they are, and the head dense 512 -> 1024 -> ReLU -> dense
  1200, whose 1200-d output is the embedding (there is no separate classification head:
  ``logits`` is None). 12,924,144 parameters (the authors' count: 12.92 M) and 17.8 GFLOP
  per 128-px image forward (multiply-add = 2 FLOP, convolutions and dense layers).

Both are trained from scratch. Siamese use: the same ``variables`` embed both images of a
pair (weights shared); see ``siamese_embeddings``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdgan_jax.models.layers import Dtype, imagenet_normalize
from sdgan_jax.models.resnet import ResNet, global_avg_pool, resnet_kwargs


class IdentityNet(nn.Module):
  """ResNet identity network: embedding (eq. 8's feature) and identity logits.

  Fields:
    num_identities: width of the linear classification head on the embedding; 0: no head
      (``logits`` None).
    embed_dim: width of the embedding.
    hidden_dim: > 0 puts a dense ``hidden_dim`` -> ReLU before the embedding layer (the
      authors' head); 0 makes the embedding linear in the pooled trunk features.
    depth, width, norm: the ResNet trunk (``resnet_kwargs``).
    stem: the trunk's stem, 'imagenet' (7x7/2 + max-pool) or 'cifar' (3x3/1).
    normalize_input: ImageNet mean/std normalisation of the [0, 1] images first.
  """

  num_identities: int = 1200
  embed_dim: int = 1024
  hidden_dim: int = 0
  depth: int = 18
  width: int = 64
  norm: str = 'batch'
  stem: str = 'imagenet'
  normalize_input: bool = True
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[str, Any]:
    """Maps images ``[B,H,W,3]`` in [0, 1] to ``embedding`` [B, embed_dim] and ``logits``.

    ``logits`` is ``[B, num_identities]``, or None when ``num_identities == 0``. Outputs are
    float32 whatever the compute dtype, since the losses are computed in float32.
    """
    if self.normalize_input:
      x = imagenet_normalize(images, self.dtype)
    else:
      x = images.astype(self.dtype or jnp.float32)
    features = ResNet(
      **resnet_kwargs(self.depth),
      width=self.width,
      norm=self.norm,
      stem=self.stem,
      dtype=self.dtype,
      name='trunk',
    )(x, train)
    x = global_avg_pool(features[-1])
    if self.hidden_dim:
      x = nn.relu(
        nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=self.param_dtype, name='hidden')(x)
      )
    embedding = nn.Dense(
      self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype, name='embed'
    )(x)
    logits = None
    if self.num_identities:
      logits = nn.Dense(
        self.num_identities, dtype=self.dtype, param_dtype=self.param_dtype, name='head'
      )(embedding).astype(jnp.float32)
    return dict(embedding=embedding.astype(jnp.float32), logits=logits)


RESNET18 = {}
AUTHORS = dict(
  stem='cifar', normalize_input=False, hidden_dim=1024, embed_dim=1200, num_identities=0
)
PRESETS = {'resnet18': RESNET18, 'authors': AUTHORS}


def identity_from_config(config, dtype: Dtype = None) -> IdentityNet:
  """Builds the identity network from ``config.model.identity``: a ``preset`` key
  ('resnet18', the default, or 'authors'; see the module docstring) plus overrides of
  ``IdentityNet``'s fields. ``dtype`` is the compute dtype."""
  cfg = dict(config)
  preset = cfg.pop('preset', 'resnet18')
  if preset not in PRESETS:
    raise ValueError(f'unknown model.identity.preset {preset!r}; choose one of {sorted(PRESETS)}')
  kwargs = dict(PRESETS[preset])
  fields = set(IdentityNet.__dataclass_fields__) - {'parent', 'name'}
  for key, value in cfg.items():
    if key not in fields:
      raise ValueError(f'unknown key model.identity.{key}; valid keys: {sorted(fields)}')
    kwargs[key] = value
  if dtype is not None:
    kwargs['dtype'] = dtype
  return IdentityNet(**kwargs)


def siamese_embeddings(
  apply_fn: Callable[..., Any], variables, x1: jax.Array, x2: jax.Array, train: bool = False
):
  """Embeds both images of each pair with the same (shared) weights (paper eq. 8).

  The pair halves go through the network as one batch: one pass instead of two and, in
  training, batch-norm statistics over the whole pair batch, updated once per step.

  Args:
    apply_fn: ``IdentityNet(...).apply``.
    variables: the network's variables (``params`` and ``batch_stats``).
    x1: first images of the pairs, ``[B,H,W,3]`` in [0, 1].
    x2: second images, same shape.
    train: batch-norm in training mode (then its updated statistics are returned).

  Returns:
    ``((e1, e2), updates)``: embeddings ``[B, D]`` of ``x1`` and ``x2``, and the updated
    mutable collections (``{'batch_stats': ...}`` when ``train``, else ``{}``).
  """
  if x1.shape != x2.shape:
    raise ValueError(f'pair halves must have the same shape, got {x1.shape} and {x2.shape}')
  x = jnp.concatenate([x1, x2], axis=0)
  if train:
    out, updates = apply_fn(variables, x, train=True, mutable=['batch_stats'])
  else:
    out, updates = apply_fn(variables, x, train=False), {}
  e1, e2 = jnp.split(out['embedding'], 2, axis=0)
  return (e1, e2), updates
