"""SDGAN losses (paper §3.4, eq. 2-9) as pure functions.

Conventions: images are float NHWC in [0, 1]; every loss returns a scalar (batch mean)
unless its docstring says otherwise. Nothing here holds parameters or does I/O, so the
functions can be used inside ``jax.jit``/``jax.grad`` with any network outputs.

Where the paper and the authors' code differ (docs/deviations.md) the difference is an
argument or a preset (``paper_weights`` / ``authors_weights``), never a silent change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dm_pix
import jax
import jax.numpy as jnp

Array = jax.Array
Logits = Array | Sequence[Array]
Features = Array | Sequence[Array]

# Keys of `generator_total_loss`'s `terms`, in eq. 9 order (plus the authors' L1 and the
# optional push away from the source identity).
TERM_NAMES = ('adv', 'ssim', 'perceptual', 'contrastive', 'l1', 'source_push')


# ----------------------------------------------------------------------------------------
# LSGAN (eq. 2-4)


def _per_scale(logits: Logits) -> list[Array]:
  """Returns the per-scale outputs of a (possibly multiscale) discriminator."""
  if isinstance(logits, (list, tuple)):
    if not logits:
      raise ValueError('Empty list of discriminator outputs.')
    for x in logits:
      if isinstance(x, (list, tuple)):
        raise TypeError('Expected one array per discriminator scale, got a nested sequence.')
    return [jnp.asarray(x) for x in logits]
  return [jnp.asarray(logits)]


def lsgan_d_loss(real_logits: Logits, fake_logits: Logits) -> Array:
  """Discriminator LSGAN loss, eq. 2: 0.5*E[(D(x)-1)^2] + 0.5*E[D(G(z))^2].

  Args:
    real_logits: D's output on real images, or a list with one array per scale.
    fake_logits: D's output on generated images, same structure as `real_logits`.

  Returns:
    Scalar loss; with several scales, the mean of the per-scale losses.
  """
  real, fake = _per_scale(real_logits), _per_scale(fake_logits)
  if len(real) != len(fake):
    raise ValueError(f'real_logits has {len(real)} scales but fake_logits has {len(fake)}.')
  losses = [
    0.5 * jnp.mean(jnp.square(r - 1.0)) + 0.5 * jnp.mean(jnp.square(f)) for r, f in zip(real, fake)
  ]
  return sum(losses) / len(losses)


def lsgan_g_loss(fake_logits: Logits) -> Array:
  """Generator LSGAN loss, eq. 3: 0.5*E[(D(G(z))-1)^2], averaged over scales."""
  losses = [0.5 * jnp.mean(jnp.square(f - 1.0)) for f in _per_scale(fake_logits)]
  return sum(losses) / len(losses)


# ----------------------------------------------------------------------------------------
# SSIM (eq. 5-6)

SSIM_FILTER_SIZE = 11
SSIM_FILTER_SIGMA = 1.5


def ssim(a: Array, b: Array, mask: Array | None = None, *, max_val: float = 1.0) -> Array:
  """Mean SSIM per image, eq. 5 (Gaussian 11x11 window, sigma 1.5, k1 0.01, k2 0.03).

  The map is computed on the 'valid' window positions only (no padding), like
  scikit-image's ``structural_similarity`` after its border crop, and averaged over
  positions and channels.

  Args:
    a: Images, NHWC (or HWC), float in [0, max_val].
    b: Images with the shape of `a`.
    mask: Optional weights, shape (N, H, W), (N, H, W, 1) or (N, H, W, C) (no N for HWC).
      The SSIM map is averaged with these weights, cropped to the valid window
      positions; an image whose cropped weights sum to 0 gets SSIM 1 (no loss).
    max_val: Dynamic range of the images.

  Returns:
    SSIM per image, shape (N,) (a scalar for HWC input).
  """
  a = jnp.asarray(a)
  b = jnp.asarray(b)
  if mask is None:
    return dm_pix.ssim(
      a, b, max_val=max_val, filter_size=SSIM_FILTER_SIZE, filter_sigma=SSIM_FILTER_SIGMA
    )
  ssim_map = dm_pix.ssim(
    a,
    b,
    max_val=max_val,
    filter_size=SSIM_FILTER_SIZE,
    filter_sigma=SSIM_FILTER_SIGMA,
    return_map=True,
  )
  mask = jnp.asarray(mask, ssim_map.dtype)
  if mask.ndim == a.ndim - 1:
    mask = mask[..., None]
  if mask.ndim != a.ndim:
    raise ValueError(f'mask of shape {mask.shape} does not fit images of shape {a.shape}.')
  # The map exists only where the whole window fits: crop the mask to the same positions.
  r = SSIM_FILTER_SIZE // 2
  mask = mask[..., r : mask.shape[-3] - r, r : mask.shape[-2] - r, :]
  mask = jnp.broadcast_to(mask, ssim_map.shape)
  axes = (-3, -2, -1)
  den = jnp.sum(mask, axis=axes)
  num = jnp.sum(ssim_map * mask, axis=axes)
  # Double where: keeps the gradient finite for images with an empty mask.
  safe_den = jnp.where(den > 0, den, 1.0)
  return jnp.where(den > 0, num / safe_den, 1.0)


def ssim_loss(a: Array, b: Array, mask: Array | None = None, *, max_val: float = 1.0) -> Array:
  """SSIM loss, eq. 6: mean over the batch of 1 - SSIM(a, b)."""
  return jnp.mean(1.0 - ssim(a, b, mask, max_val=max_val))


# ----------------------------------------------------------------------------------------
# Perceptual (eq. 7)


def _as_list(features: Features) -> list[Array]:
  if isinstance(features, (list, tuple)):
    return list(features)
  return [features]


def perceptual_loss(
  features_fn: Callable[[Array], Features],
  generated: Array,
  target: Array,
  feature_scale: float = 1.0,
  *,
  target_features: Features | None = None,
) -> Array:
  """Perceptual loss, eq. 7: mean |V(G(x)) - V(y)| over C*H*W and the batch.

  Args:
    features_fn: Maps [0, 1] NHWC images to a feature map or a list of them (VGG-16
      relu3_3 in the paper); any input normalisation (ImageNet mean/std) is its job.
    generated: Generator output, NHWC in [0, 1].
    target: Real target images, same shape.
    feature_scale: Multiplies the features (so the loss): puts a network whose inputs
      were on another scale (caffe's 0-255 VGG) on the scale the loss weight assumes.
    target_features: ``features_fn(target)`` when the caller has them already (the train
      step computes them once for all its generator updates); ``target`` is then unused.

  Returns:
    Scalar loss; with several feature maps, the sum of the per-map means.
  """
  gen_feats = _as_list(features_fn(generated))
  # The target is a fixed reference: no gradient may reach it (or the network through it).
  if target_features is None:
    target_features = features_fn(jax.lax.stop_gradient(target))
  tgt_feats = _as_list(jax.lax.stop_gradient(target_features))
  if len(gen_feats) != len(tgt_feats):
    raise ValueError('features_fn returned a different number of maps for the two inputs.')
  return feature_scale * sum(jnp.mean(jnp.abs(g - t)) for g, t in zip(gen_feats, tgt_feats))


# ----------------------------------------------------------------------------------------
# Contrastive (eq. 8)


def _safe_l2_norm(x: Array, axis: int = -1) -> Array:
  """L2 norm with a zero (not NaN) gradient where the norm is 0."""
  sq = jnp.sum(jnp.square(x), axis=axis)
  nonzero = sq > 0
  # Double where: sqrt's gradient at 0 is inf, and inf*0 in the backward pass is NaN.
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


CONTRASTIVE_MODES = ('paper', 'authors')
# The authors' code adds this inside the square root of the margin term only.
AUTHORS_CONTRASTIVE_EPS = 1e-9


def contrastive_loss(
  x1: Array, x2: Array, same: Array, margin: float, mode: str = 'paper'
) -> Array:
  """Contrastive loss between embedding pairs, averaged over the batch.

  With ``d_i = ||x1_i - x2_i||_2``:

  * ``'paper'``, eq. 8: ``same_i * d_i + (1 - same_i) * max(0, m - d_i)``;
  * ``'authors'``, the authors' code: ``0.5 * (same_i * d_i^2 + (1 - same_i) *
    max(0, m - sqrt(d_i^2 + 1e-9))^2)``, the classic Hadsell et al. form.

  Args:
    x1: Embeddings, shape (N, ...); all axes after the first are flattened.
    x2: Embeddings with the shape of `x1`.
    same: Shape (N,), 1 (or True) for pairs of the same identity, 0 otherwise.
    margin: The margin m.
    mode: 'paper' or 'authors'.

  Returns:
    Scalar loss.
  """
  if mode not in CONTRASTIVE_MODES:
    raise ValueError(f'unknown contrastive mode {mode!r}; use one of {CONTRASTIVE_MODES}')
  x1 = jnp.asarray(x1)
  x2 = jnp.asarray(x2)
  if x1.shape != x2.shape:
    raise ValueError(f'x1 {x1.shape} and x2 {x2.shape} must have the same shape.')
  diff = (x1 - x2).reshape(x1.shape[0], -1)
  if mode == 'paper':
    d = _safe_l2_norm(diff)
    same = jnp.asarray(same).astype(d.dtype).reshape(d.shape)
    per_pair = same * d + (1.0 - same) * jnp.maximum(0.0, margin - d)
  else:
    d2 = jnp.sum(jnp.square(diff), axis=-1)
    same = jnp.asarray(same).astype(d2.dtype).reshape(d2.shape)
    hinge = jnp.maximum(0.0, margin - jnp.sqrt(d2 + AUTHORS_CONTRASTIVE_EPS))
    per_pair = 0.5 * (same * d2 + (1.0 - same) * jnp.square(hinge))
  return jnp.mean(per_pair)


# ----------------------------------------------------------------------------------------
# L1 reconstruction (the authors' code; not in eq. 9)


def l1_loss(a: Array, b: Array, mask: Array | None = None) -> Array:
  """Mean absolute error; with `mask`, the mask-weighted mean.

  Args:
    a: Array.
    b: Array with the shape of `a`.
    mask: Optional weights broadcastable to `a` (e.g. (N, H, W, 1) for NHWC images);
      the result is sum(mask*|a-b|) / sum(mask broadcast to a's shape), 0 if that is 0.

  Returns:
    Scalar loss.
  """
  err = jnp.abs(jnp.asarray(a) - jnp.asarray(b))
  if mask is None:
    return jnp.mean(err)
  mask = jnp.broadcast_to(jnp.asarray(mask, err.dtype), err.shape)
  den = jnp.sum(mask)
  safe_den = jnp.where(den > 0, den, 1.0)
  return jnp.where(den > 0, jnp.sum(mask * err) / safe_den, 0.0)


# ----------------------------------------------------------------------------------------
# Total (eq. 9)


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """Weights of the generator objective, eq. 9 (plus the authors' L1 term).

  Attributes:
    ssim: lambda_1 of eq. 9 (SSIM loss).
    perceptual: lambda_2 of eq. 9 (perceptual loss).
    contrastive: lambda_3 of eq. 9: the contrastive term that pulls the output towards the
      target person (pair labelled "same"; paper §3.4).
    l1: Weight of the L1 reconstruction loss (authors' code; not in eq. 9).
    adversarial: Weight of the LSGAN generator loss (1 in eq. 9).
    source_push: Weight of an extra contrastive term that pushes the output at least the
      margin away from the source person (pair labelled "different"); in neither the paper
      nor the authors' code, 0 by default.

  Defaults are `paper_weights()`.
  """

  ssim: float = 1.0
  perceptual: float = 20.0
  contrastive: float = 1.0
  l1: float = 0.0
  adversarial: float = 1.0
  source_push: float = 0.0

  # Config key -> field name.
  CONFIG_KEYS = {
    'lambda_ssim': 'ssim',
    'lambda_perceptual': 'perceptual',
    'lambda_contrastive': 'contrastive',
    'lambda_l1': 'l1',
    'lambda_adv': 'adversarial',
    'lambda_source_push': 'source_push',
  }
  # Other loss settings that live beside the weights in `config.loss`; not weights.
  OTHER_CONFIG_KEYS = (
    'contrastive_margin',
    'contrastive_mode',
    'perceptual_weights',
    'perceptual_layer',
    'perceptual_input_convention',
    'perceptual_feature_scale',
  )

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f'LossWeights.{f.name} must be a number, got {value!r}.')
      if not value >= 0.0 or value == float('inf'):
        raise ValueError(f'LossWeights.{f.name} must be finite and >= 0, got {value!r}.')
      object.__setattr__(self, f.name, float(value))

  @classmethod
  def from_config(cls, cfg: Any) -> LossWeights:
    """Builds weights from a ConfigDict (or mapping) with `lambda_*` keys.

    Keys: lambda_ssim, lambda_perceptual, lambda_contrastive, lambda_l1, lambda_adv;
    missing keys keep the paper default. `OTHER_CONFIG_KEYS` are skipped. Any other key
    raises ValueError, so that a typo cannot silently leave a weight at its default.
    """
    items = cfg.items() if hasattr(cfg, 'items') else dict(cfg).items()
    kwargs = {}
    for key, value in items:
      if key in cls.OTHER_CONFIG_KEYS:
        continue
      if key not in cls.CONFIG_KEYS:
        raise ValueError(
          f'Unknown loss config key {key!r}; expected one of '
          f'{sorted(cls.CONFIG_KEYS) + sorted(cls.OTHER_CONFIG_KEYS)}.'
        )
      kwargs[cls.CONFIG_KEYS[key]] = value
    return cls(**kwargs)

  def as_dict(self) -> dict[str, float]:
    """Weight per `generator_total_loss` term name."""
    return {
      'adv': self.adversarial,
      'ssim': self.ssim,
      'perceptual': self.perceptual,
      'contrastive': self.contrastive,
      'l1': self.l1,
      'source_push': self.source_push,
    }


def paper_weights() -> LossWeights:
  """Eq. 9 to the letter: L_adv + 1*L_S + 20*L_P + 1*L_C (no L1 term).

  The paper gives no lambda values: perceptual 20 and contrastive 1 are the authors' code
  values; the SSIM weight 1 is our choice (their code has no SSIM term and uses 10*L1
  instead, see ``authors_weights``). Matches configs/celeba.py.
  """
  return LossWeights(ssim=1.0, perceptual=20.0, contrastive=1.0, l1=0.0, adversarial=1.0)


def authors_weights() -> LossWeights:
  """The authors' code: G loss = LSGAN + contrastive + 10*L1 + 20*perceptual, no SSIM.

  Their LSGAN term is a plain mean squared error, twice ``lsgan_g_loss`` (eq. 3 has the
  factor 0.5), hence the adversarial weight 2: the same objective.
  """
  return LossWeights(ssim=0.0, perceptual=20.0, contrastive=1.0, l1=10.0, adversarial=2.0)


def generator_total_loss(
  terms: Mapping[str, Array], weights: LossWeights
) -> tuple[Array, dict[str, Array]]:
  """Generator objective, eq. 9: L_adv + l1*L_S + l2*L_P + l3*L_C (+ w_l1*L1).

  'adv' is the generator's LSGAN loss (eq. 3): the L(D) half of eq. 4 is minimised by the
  discriminator's own update.

  Args:
    terms: Unweighted scalar losses keyed by ``TERM_NAMES``. Terms whose weight is 0 may
      be left out.
    weights: The weights.

  Returns:
    (total, metrics) where metrics holds the unweighted terms given and 'total'.

  Raises:
    ValueError: A term with non-zero weight is missing, or a key is unknown.
  """
  unknown = sorted(set(terms) - set(TERM_NAMES))
  if unknown:
    raise ValueError(f'Unknown loss terms {unknown}; expected a subset of {TERM_NAMES}.')
  total = jnp.zeros((), jnp.float32)
  for name, w in weights.as_dict().items():
    if w == 0.0:
      # Skipped rather than multiplied by 0, so that an inf/NaN in an unused term (or its
      # gradient) cannot poison the total.
      continue
    if name not in terms:
      raise ValueError(f'Loss term {name!r} has weight {w} but was not given.')
    total = total + w * jnp.asarray(terms[name])
  metrics = {name: jnp.asarray(terms[name]) for name in TERM_NAMES if name in terms}
  metrics['total'] = total
  return total, metrics
