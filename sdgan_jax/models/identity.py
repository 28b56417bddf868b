"""Siamese identity network of the contrastive loss (paper §3.4, eq. 8; DESIGN §2).

ResNet-18 trunk -> global average pool (512) -> dense 1024 (the embedding whose distances
the contrastive loss uses) -> dense ``num_identities`` (the 1200-way classification head of
the authors' code). Trained from scratch; with its 1200-way head it has 12,931,824
parameters (11,176,512 trunk + 525,312 + 1,230,000), the authors' 12.92 M.

Siamese use: the same ``variables`` embed both images of a pair (weights shared); see
``siamese_embeddings``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdgan_jax.models.layers import Dtype, imagenet_normalize
from sdgan_jax.models.resnet import ResNet, global_avg_pool, resnet_kwargs

class IdentityNet(nn.Module):
  """ResNet identity network: embedding (eq. 8's feature) and identity logits.

  The head is linear on the embedding (no nonlinearity between), so the classification
  loss shapes the same space the contrastive distances are measured in.
  """

  num_identities: int = 1200
  embed_dim: int = 1024
  depth: int = 18
  width: int = 64
  norm: str = 'batch'
  dtype: Dtype = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[str, Any]:
    """Maps images ``[B,H,W,3]`` in [0, 1] to ``embedding`` [B, embed_dim] and ``logits``.

    ``logits`` is ``[B, num_identities]``, or None when ``num_identities == 0``. Outputs are
    float32 whatever the compute dtype, since the losses are computed in float32.
    """
    x = imagenet_normalize(images, self.dtype)
    features = ResNet(**resnet_kwargs(self.depth), width=self.width, norm=self.norm,
                      dtype=self.dtype, name='trunk')(x, train)
    pooled = global_avg_pool(features[-1])
    embedding = nn.Dense(self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                         name='embed')(pooled)
    logits = None
    if self.num_identities:
      logits = nn.Dense(self.num_identities, dtype=self.dtype, param_dtype=self.param_dtype,
                        name='head')(embedding).astype(jnp.float32)
    return dict(embedding=embedding.astype(jnp.float32), logits=logits)


def siamese_embeddings(apply_fn: Callable[..., Any], variables, x1: jax.Array,
                       x2: jax.Array, train: bool = False):
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
