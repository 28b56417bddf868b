"""Tests of sdgan_jax.losses against hand computations and scikit-image's SSIM."""

import io

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageFilter
from skimage.metrics import structural_similarity

from sdgan_jax import losses

# ----------------------------------------------------------------------------------------
# SSIM on a real face photo

# Face of skimage.data.astronaut() (NASA portrait of Eileen Collins, public domain):
# a square crop from the top of the hair to below the chin.
_FACE = (slice(10, 200), slice(140, 330))
_DISTORTIONS = ('self', 'noise', 'blur', 'jpeg')


def _to_float(img: Image.Image) -> np.ndarray:
  return np.asarray(img, dtype=np.float32) / 255.0


def _face_pairs(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (originals, distorted), each (4, size, size, 3) float32 in [0, 1]."""
  face = Image.fromarray(skimage.data.astronaut()[_FACE]).resize((size, size), Image.BICUBIC)
  base = _to_float(face)
  rng = np.random.default_rng(0)
  noisy = np.clip(base + rng.normal(0.0, 0.05, base.shape), 0.0, 1.0).astype(np.float32)
  blurred = _to_float(face.filter(ImageFilter.GaussianBlur(radius=1.5)))
  buf = io.BytesIO()
  face.save(buf, format='JPEG', quality=15)
  jpeg = _to_float(Image.open(io.BytesIO(buf.getvalue())).convert('RGB'))
  distorted = np.stack([base, noisy, blurred, jpeg])
  return np.stack([base] * len(distorted)), distorted


def _skimage_ssim(a: np.ndarray, b: np.ndarray, full: bool = False):
  return structural_similarity(
    a.astype(np.float64),
    b.astype(np.float64),
    gaussian_weights=True,
    sigma=1.5,
    use_sample_covariance=False,
    data_range=1.0,
    channel_axis=-1,
    full=full,
  )


@pytest.fixture(scope='module', params=[64, 128])
def face_pairs(request):
  return _face_pairs(request.param)


def test_ssim_matches_skimage_on_real_face(face_pairs):
  originals, distorted = face_pairs
  got = np.asarray(jax.jit(losses.ssim)(originals, distorted))
  want = np.array([_skimage_ssim(a, b) for a, b in zip(originals, distorted)])
  assert got.shape == (len(_DISTORTIONS),)
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert got[0] == pytest.approx(1.0, abs=1e-5)
  # The distortions must be visible to SSIM, otherwise the comparison proves little.
  assert np.all(want[1:] < 0.97), dict(zip(_DISTORTIONS, want))


def test_ssim_mask_matches_skimage_map(face_pairs):
  originals, distorted = face_pairs
  size = originals.shape[1]
  mask = np.zeros((len(originals), size, size, 1), np.float32)
  mask[:, size // 4 : 3 * size // 4, size // 3 :, :] = 1.0  # A rectangle near the face centre.
  ssim = jax.jit(losses.ssim)
  got = np.asarray(ssim(originals, distorted, mask))
  r = 5  # Half the 11x11 window: skimage's border crop.
  want = []
  for a, b in zip(originals, distorted):
    _, smap = _skimage_ssim(a, b, full=True)
    m = np.broadcast_to(mask[0, r:-r, r:-r], smap[r:-r, r:-r].shape)
    want.append(np.sum(smap[r:-r, r:-r] * m) / np.sum(m))
  np.testing.assert_allclose(got, want, atol=1e-4)
  full = np.asarray(ssim(originals, distorted, np.ones_like(mask)))
  np.testing.assert_allclose(full, np.asarray(ssim(originals, distorted)), atol=1e-6)
  assert not np.allclose(got[1:], full[1:], atol=1e-3)


def test_ssim_loss_and_gradient():
  originals, distorted = _face_pairs(32)
  loss = jax.jit(losses.ssim_loss)
  assert float(loss(originals, originals)) == pytest.approx(0.0, abs=1e-6)
  assert float(loss(originals, distorted)) > 0.01
  flat = np.full_like(originals, 0.4)
  ones, zeros = np.ones(originals.shape[:3]), np.zeros(originals.shape[:3])
  cases = [
    (originals, originals, ones),  # Identical images: SSIM at its maximum.
    (flat, flat, ones),  # Zero variance everywhere.
    (flat * 0.5, flat, zeros),  # Nothing to compare.
  ]
  grad_masked = jax.jit(jax.grad(losses.ssim_loss))
  grad = jax.jit(jax.grad(lambda a, b: losses.ssim_loss(a, b)))
  for a, b, mask in cases:
    assert np.all(np.isfinite(np.asarray(grad_masked(a, b, mask))))
    if mask is ones:
      assert np.all(np.isfinite(np.asarray(grad(a, b))))
  assert float(loss(flat * 0.5, flat, zeros)) == 0.0


# ----------------------------------------------------------------------------------------
# LSGAN


def test_lsgan_d_loss_by_hand():
  real = jnp.array([1.0, 0.5])
  fake = jnp.array([0.0, 1.0])
  # 0.5*mean([(1-1)^2, (0.5-1)^2]) + 0.5*mean([0^2, 1^2]) = 0.0625 + 0.25.
  assert float(losses.lsgan_d_loss(real, fake)) == pytest.approx(0.3125)


def test_lsgan_g_loss_by_hand():
  # 0.5*mean([(0-1)^2, (1-1)^2, (3-1)^2]) = 0.5*5/3.
  assert float(losses.lsgan_g_loss(jnp.array([0.0, 1.0, 3.0]))) == pytest.approx(5 / 6)


def test_lsgan_multiscale_mean_of_scales():
  # Scale 1: per-sample logits. Scale 2: a 2x2 patch map per sample.
  real = [jnp.array([[1.0], [0.0]]), jnp.full((2, 2, 2, 1), 2.0)]
  fake = [jnp.array([[0.5], [0.5]]), jnp.zeros((2, 2, 2, 1))]
  # D, scale 1: 0.5*mean([0, 1]) + 0.5*mean([0.25, 0.25]) = 0.375; scale 2: 0.5*1 + 0 = 0.5.
  assert float(losses.lsgan_d_loss(real, fake)) == pytest.approx((0.375 + 0.5) / 2)
  assert float(losses.lsgan_d_loss(tuple(real), tuple(fake))) == pytest.approx(0.4375)
  # G, scale 1: 0.5*0.25 = 0.125; scale 2: 0.5*1 = 0.5.
  assert float(losses.lsgan_g_loss(fake)) == pytest.approx((0.125 + 0.5) / 2)
  with pytest.raises(ValueError, match='scales'):
    losses.lsgan_d_loss(real, fake[:1])


# ----------------------------------------------------------------------------------------
# Contrastive


def _paper_eq8(x1, x2, y, m):
  """Eq. 8 of the paper, written out in numpy: d for Y = 1, max(0, m - d) for Y = 0."""
  d = np.sqrt(np.sum((np.asarray(x1, np.float64) - np.asarray(x2, np.float64)) ** 2, axis=1))
  return np.mean(np.where(np.asarray(y) == 1, d, np.maximum(0.0, m - d)))


def _authors_formula(x1, x2, y, m):
  """The authors' loss as a formula: 0.5 * (y d^2 + (1 - y) max(0, m - d)^2), d Euclidean
  (their square root carries an epsilon of 1e-9 under it)."""
  d2 = np.sum((np.asarray(x1, np.float64) - np.asarray(x2, np.float64)) ** 2, axis=1)
  y = np.asarray(y, np.float64)
  hinge = np.maximum(0.0, m - np.sqrt(d2 + 1e-9))
  return np.mean(0.5 * (y * d2 + (1 - y) * hinge**2))


def test_contrastive_by_hand():
  x1 = jnp.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
  x2 = jnp.array([[3.0, 4.0], [1.0, 0.0], [1.0, 3.0]])
  same = jnp.array([1, 0, 0])
  # d = [5, 1, 2]; margin 4: [5, max(0, 4-1), max(0, 4-2)] = [5, 3, 2].
  assert float(losses.contrastive_loss(x1, x2, same, margin=4.0)) == pytest.approx(10 / 3)
  # Authors, margin 3: 0.5 * [25, (3-1)^2, (3-2)^2] = [12.5, 2, 0.5].
  got = losses.contrastive_loss(x1, x2, same.astype(bool), margin=3.0, mode='authors')
  assert float(got) == pytest.approx(15 / 3, rel=1e-6)
  with pytest.raises(ValueError, match='squared'):
    losses.contrastive_loss(x1, x2, same, 3.0, mode='squared')


@pytest.mark.parametrize('mode,reference', [('paper', _paper_eq8), ('authors', _authors_formula)])
def test_contrastive_matches_its_formula_on_random_embeddings(mode, reference):
  rng = np.random.default_rng(0)
  x1 = rng.normal(size=(64, 12)).astype(np.float32)
  x2 = (x1 + rng.normal(scale=rng.uniform(0.05, 1.5, (64, 1)), size=(64, 12))).astype(np.float32)
  y = rng.integers(0, 2, 64)
  for m in (1.0, 3.0, 6.0):  # margins on both sides of the distances
    got = float(losses.contrastive_loss(x1, x2, y, m, mode=mode))
    assert got == pytest.approx(reference(x1, x2, y, m), rel=1e-5)


def test_contrastive_margin_clips_far_negatives():
  x1 = jnp.array([[0.0, 0.0]])
  x2 = jnp.array([[6.0, 8.0]])  # d = 10 > margin.
  for mode in losses.CONTRASTIVE_MODES:
    loss, grad = jax.value_and_grad(losses.contrastive_loss)(x1, x2, jnp.array([0.0]), 3.0, mode)
    assert float(loss) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_contrastive_gradient_finite_at_identical_inputs():
  x = jnp.array([[0.3, -1.2, 2.0], [0.0, 0.0, 0.0]])
  for same in (jnp.ones(2), jnp.zeros(2)):
    for mode in losses.CONTRASTIVE_MODES:
      grad = jax.grad(losses.contrastive_loss)(x, x, same, 3.0, mode)
      assert np.all(np.isfinite(np.asarray(grad))), (same, mode)
  # Away from 0 the gradient is the unit difference vector, halved by the batch mean.
  x2 = jnp.array([[0.3, -1.2, 2.0], [3.0, 4.0, 0.0]])
  grad = jax.grad(losses.contrastive_loss)(x, x2, jnp.ones(2), 3.0)
  np.testing.assert_allclose(np.asarray(grad[1]), [-0.3, -0.4, 0.0], atol=1e-6)


# ----------------------------------------------------------------------------------------
# Perceptual


def _avg_pool2(x):
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def test_perceptual_matches_numpy():
  rng = np.random.default_rng(1)
  gen = rng.uniform(size=(2, 8, 8, 3)).astype(np.float32)
  tgt = rng.uniform(size=(2, 8, 8, 3)).astype(np.float32)
  want_pool = np.mean(np.abs(_avg_pool2(gen) - _avg_pool2(tgt)))
  got = losses.perceptual_loss(_avg_pool2, jnp.asarray(gen), jnp.asarray(tgt))
  assert float(got) == pytest.approx(want_pool, rel=1e-5)
  two_maps = lambda x: [x, _avg_pool2(x)]
  want = np.mean(np.abs(gen - tgt)) + want_pool
  got = losses.perceptual_loss(two_maps, jnp.asarray(gen), jnp.asarray(tgt))
  assert float(got) == pytest.approx(want, rel=1e-5)
  # feature_scale puts another network's feature scale on the loss weight's scale
  got = losses.perceptual_loss(_avg_pool2, jnp.asarray(gen), jnp.asarray(tgt), 1 / 57.6)
  assert float(got) == pytest.approx(want_pool / 57.6, rel=1e-5)
  # precomputed target features (the train step's, shared by its generator updates)
  got = losses.perceptual_loss(
    two_maps, jnp.asarray(gen), None, target_features=[jnp.asarray(tgt), _avg_pool2(tgt)]
  )
  assert float(got) == pytest.approx(want, rel=1e-5)


def test_perceptual_no_gradient_into_target():
  rng = np.random.default_rng(2)
  gen = jnp.asarray(rng.uniform(size=(2, 4, 4, 1)), jnp.float32)
  tgt = jnp.asarray(rng.uniform(size=(2, 4, 4, 1)), jnp.float32)
  g_gen, g_tgt = jax.grad(losses.perceptual_loss, argnums=(1, 2))(_avg_pool2, gen, tgt)
  assert np.any(np.asarray(g_gen) != 0.0)
  np.testing.assert_array_equal(np.asarray(g_tgt), 0.0)


# ----------------------------------------------------------------------------------------
# L1


def test_l1_loss_by_hand():
  a = jnp.array([[[[0.0], [1.0]], [[2.0], [3.0]]]])  # (1, 2, 2, 1)
  b = jnp.zeros_like(a)
  assert float(losses.l1_loss(a, b)) == pytest.approx(1.5)
  mask = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])[..., None]
  assert float(losses.l1_loss(a, b, mask)) == pytest.approx(1.5)  # (0 + 3) / 2.
  mask = jnp.array([[[0.0, 1.0], [1.0, 1.0]]])[..., None]
  assert float(losses.l1_loss(a, b, mask)) == pytest.approx(2.0)  # (1 + 2 + 3) / 3.
  assert float(losses.l1_loss(a, b, jnp.zeros_like(a))) == 0.0


# ----------------------------------------------------------------------------------------
# Total


def test_generator_total_loss_by_hand():
  weights = losses.LossWeights(ssim=2.0, perceptual=3.0, contrastive=5.0, l1=7.0, adversarial=0.5)
  terms = {'adv': 1.0, 'ssim': 0.1, 'perceptual': 0.2, 'contrastive': 0.3, 'l1': 0.4}
  total, metrics = losses.generator_total_loss(terms, weights)
  want = 0.5 * 1.0 + 2.0 * 0.1 + 3.0 * 0.2 + 5.0 * 0.3 + 7.0 * 0.4
  assert float(total) == pytest.approx(want)
  assert float(metrics['total']) == pytest.approx(want)
  assert float(metrics['perceptual']) == pytest.approx(0.2)  # Unweighted.


def test_generator_total_loss_zero_weight_term_optional():
  terms = {'adv': 1.0, 'perceptual': 0.5, 'contrastive': 2.0, 'l1': 0.25}
  total, metrics = losses.generator_total_loss(terms, losses.authors_weights())
  assert float(total) == pytest.approx(2 * 1.0 + 20 * 0.5 + 2.0 + 10 * 0.25)
  assert 'ssim' not in metrics
  # A NaN in an unused term must not reach the total.
  total, _ = losses.generator_total_loss({**terms, 'ssim': jnp.nan}, losses.authors_weights())
  assert np.isfinite(float(total))


def test_generator_total_loss_missing_or_unknown_term_raises():
  terms = {'adv': 1.0, 'perceptual': 0.5, 'contrastive': 2.0, 'l1': 0.1}
  with pytest.raises(ValueError, match="'ssim'"):
    losses.generator_total_loss(terms, losses.paper_weights())
  with pytest.raises(ValueError, match='percep'):
    losses.generator_total_loss({**terms, 'ssim': 0.1, 'percep': 1.0}, losses.paper_weights())
  total, _ = losses.generator_total_loss({**terms, 'ssim': 0.1}, losses.paper_weights())
  assert float(total) == pytest.approx(1.0 + 0.1 + 20 * 0.5 + 2.0)  # eq. 9 has no L1


def test_presets():
  """``authors_weights`` gives the authors' generator objective, written from their script:
  MSE(D(fake), 1) + contrastive + 10 * L1 + 20 * perceptual (no SSIM); ``paper_weights``
  gives eq. 9 with the recipe's lambdas. Both are the recipes' configs."""
  from sdgan_jax.configs import celeba  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(4, 1)), jnp.float32)
  a, b = (jnp.asarray(rng.uniform(size=(4, 8, 8, 3)), jnp.float32) for _ in range(2))
  terms = {
    'adv': losses.lsgan_g_loss(logits),
    'ssim': losses.ssim_loss(a, b),
    'perceptual': jnp.float32(0.37),
    'contrastive': jnp.float32(1.9),
    'l1': losses.l1_loss(a, b),
  }
  theirs = (
    jnp.mean(jnp.square(logits - 1))
    + terms['contrastive']
    + 10 * jnp.mean(jnp.abs(a - b))
    + 20 * terms['perceptual']
  )
  total, _ = losses.generator_total_loss(terms, losses.authors_weights())
  np.testing.assert_allclose(total, theirs, rtol=1e-6)
  eq9 = terms['adv'] + terms['ssim'] + 20 * terms['perceptual'] + terms['contrastive']
  total, _ = losses.generator_total_loss(terms, losses.paper_weights())
  np.testing.assert_allclose(total, eq9, rtol=1e-6)
  assert losses.LossWeights.from_config(celeba.get_config().loss) == losses.paper_weights()
  assert (
    losses.LossWeights.from_config(celeba.get_config('authors').loss) == losses.authors_weights()
  )


def test_loss_weights_from_config():
  cfg = ml_collections.ConfigDict(
    {
      'lambda_ssim': 0.0,
      'lambda_perceptual': 20,
      'lambda_contrastive': 1.0,
      'lambda_l1': 10.0,
      'lambda_adv': 2.0,
    }
  )
  assert losses.LossWeights.from_config(cfg) == losses.authors_weights()
  partial = losses.LossWeights.from_config(
    ml_collections.ConfigDict({'lambda_ssim': 3.0, 'contrastive_margin': 3.0})
  )
  assert partial == losses.LossWeights(ssim=3.0, perceptual=20.0, contrastive=1.0, l1=0.0)
  cfg.lambda_percept = 1.0
  with pytest.raises(ValueError, match='lambda_percept'):
    losses.LossWeights.from_config(cfg)
  with pytest.raises(ValueError, match='l1'):
    losses.LossWeights(l1=-1.0)
