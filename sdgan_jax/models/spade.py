"""SPADE normalisation and SPADE residual block (SDGAN paper §3.4, eq. 1; Park et al. 2019)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sdgan_jax.models.layers import Conv, Dtype, norm_layer, resize_nearest


class SPADE(nn.Module):
  """Spatially-adaptive denormalisation, eq. (1): ``out = alpha * norm(x) + beta``.

  ``norm`` is parameter-free (instance or batch statistics); ``alpha = 1 + gamma`` and
  ``beta`` are per-pixel maps predicted from the semantic map, resized to ``x``, by a shared
  ``hidden``-channel conv + ReLU and a conv to gamma and beta. With ``fused=True`` gamma and
  beta come from one conv with ``2 * features`` outputs: the same function as two separate
  convs (their kernels concatenated) in one larger, better-utilised matmul.
  """

  hidden: int = 128
  kernel_size: int = 3
  norm: str = 'instance'
  fused: bool = True
  dtype: Dtype = None

  @nn.compact
  def __call__(self, x: jax.Array, semantic: jax.Array, train: bool = False) -> jax.Array:
    features = x.shape[-1]
    normalized = norm_layer(self.norm, self.dtype, train, name='param_free_norm', use_affine=False)(
      x
    )
    segmap = resize_nearest(semantic, x.shape[1], x.shape[2]).astype(normalized.dtype)
    actv = nn.relu(Conv(self.hidden, self.kernel_size, dtype=self.dtype, name='shared')(segmap))
    if self.fused:
      gamma_beta = Conv(2 * features, self.kernel_size, dtype=self.dtype, name='gamma_beta')(actv)
      gamma, beta = jnp.split(gamma_beta, 2, axis=-1)
    else:
      gamma = Conv(features, self.kernel_size, dtype=self.dtype, name='gamma')(actv)
      beta = Conv(features, self.kernel_size, dtype=self.dtype, name='beta')(actv)
    return normalized * (1 + gamma) + beta


class SPADEResBlock(nn.Module):
  """SPADE ResBlk (paper Fig. 3): two SPADE -> LeakyReLU(0.2) -> 3x3 conv stages.

  The middle width is ``min(in, out)``; a learned SPADE + 1x1 conv shortcut is used when
  the widths differ. Spectral norm (switchable) applies to the block's convs, not to the
  SPADE modulation convs, as in the authors' code.
  """

  features: int
  spade_hidden: int = 128
  spade_kernel: int = 3
  norm: str = 'instance'
  fused: bool = True
  spectral_norm: bool = True
  dtype: Dtype = None

  def _spade(self, name):
    return SPADE(self.spade_hidden, self.spade_kernel, self.norm, self.fused, self.dtype, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, semantic: jax.Array, train: bool = False) -> jax.Array:
    fin = x.shape[-1]
    fmid = min(fin, self.features)
    if fin != self.features:
      shortcut = Conv(
        self.features,
        1,
        use_bias=False,
        spectral_norm=self.spectral_norm,
        dtype=self.dtype,
        name='conv_s',
      )(self._spade('norm_s')(x, semantic, train), train)
    else:
      shortcut = x
    dx = Conv(fmid, 3, spectral_norm=self.spectral_norm, dtype=self.dtype, name='conv_0')(
      nn.leaky_relu(self._spade('norm_0')(x, semantic, train), 0.2), train
    )
    dx = Conv(self.features, 3, spectral_norm=self.spectral_norm, dtype=self.dtype, name='conv_1')(
      nn.leaky_relu(self._spade('norm_1')(dx, semantic, train), 0.2), train
    )
    return shortcut + dx
