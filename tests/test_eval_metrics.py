"""The evaluation's metrics (paper Tables 1 and 3) against independent references.

SSIM and PSNR against scikit-image; the Fréchet distance against scipy's matrix square root
and the closed form for diagonal Gaussians; KID against a direct double loop; Recall@1 on
a hand-made embedding set; the tables' formatting. No weights, no TensorFlow: seconds.
"""

import math

import numpy as np
import pytest
import scipy.linalg
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.transform import resize as sk_resize

from sdgan_jax.evaluation import metrics, tables
from sdgan_jax.evaluation import rows as rows_lib


def _faces(n=3, size=64):
  """Real photo crops in [0, 1]: the astronaut's face and two other skimage photos."""
  crops = [
    skdata.astronaut()[20:250, 140:370],
    skdata.chelsea()[:, 50:350],
    skdata.coffee()[:, 100:500],
  ][:n]
  return np.stack([sk_resize(c, (size, size), anti_aliasing=True) for c in crops]).astype(
    np.float32
  )


def test_ssim_and_psnr_match_scikit_image():
  rng = np.random.default_rng(0)
  originals = _faces()
  noisy = np.clip(originals + rng.normal(0, 0.05, originals.shape), 0, 1).astype(np.float32)
  shifted = np.roll(originals, 3, axis=2)
  for changed in (noisy, shifted):
    ssim, psnr = (np.asarray(v) for v in metrics.ssim_psnr(originals, changed))
    for i in range(len(originals)):
      ref_ssim = structural_similarity(
        originals[i],
        changed[i],
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=-1,
      )
      ref_psnr = peak_signal_noise_ratio(originals[i], changed[i], data_range=1.0)
      assert ssim[i] == pytest.approx(ref_ssim, abs=2e-4)
      assert psnr[i] == pytest.approx(ref_psnr, abs=2e-3)
  ssim, psnr = metrics.ssim_psnr(originals, originals)
  np.testing.assert_allclose(ssim, 1.0, atol=1e-5)
  assert np.all(np.isinf(np.asarray(psnr)))  # the paper's "Inf" for an unchanged image


def _scipy_frechet(mu1, s1, mu2, s2):
  covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_matches_scipy_sqrtm_and_the_diagonal_closed_form():
  rng = np.random.default_rng(1)
  d = 12
  a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
  s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
    _scipy_frechet(mu1, s1, mu2, s2), rel=1e-8
  )
  # Diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(v1) - sqrt(v2))^2.
  v1, v2 = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
  closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
  assert metrics.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(closed)
  with pytest.raises(ValueError, match='shapes do not match'):
    metrics.frechet_distance(mu1, s1, mu2[:3], s2)


def test_fid_of_few_samples_uses_the_exact_low_rank_form():
  """Fewer images than dimensions (the sample faces): same value as the D x D computation."""
  rng = np.random.default_rng(2)
  basis = rng.normal(size=(6, 40))
  a = rng.normal(size=(15, 6)) @ basis
  b = rng.normal(size=(18, 6)) @ basis + rng.normal(0, 0.3, size=(18, 40)) + 0.5
  full = metrics.frechet_distance(*metrics.feature_statistics(a), *metrics.feature_statistics(b))
  assert metrics.fid(a, b) == pytest.approx(full, rel=1e-6)


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise():
  rng = np.random.default_rng(3)
  features = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
  assert metrics.fid(features, features) == pytest.approx(0.0, abs=1e-8)
  values = [
    metrics.fid(features, features + rng.normal(0, s, features.shape)) for s in (0.1, 0.5, 1.0, 2.0)
  ]
  assert values[0] < 0.1 * values[-1]
  assert all(x < y for x, y in zip(values, values[1:])), values


def _kid_loop(a, b):
  k = lambda x, y: (np.dot(x, y) / len(x) + 1) ** 3  # noqa: E731
  m, n = len(a), len(b)
  aa = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  bb = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  ab = sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
  return aa + bb - 2 * ab


def test_kid_matches_a_direct_double_loop_and_grows_with_a_shift():
  rng = np.random.default_rng(4)
  a, b = rng.normal(size=(12, 5)), rng.normal(0.3, 1.2, size=(15, 5))
  assert metrics.kid(a, b) == pytest.approx(_kid_loop(a, b), rel=1e-10)
  # Subsets: the mean of the subset estimates, seeded.
  big_a, big_b = rng.normal(size=(60, 5)), rng.normal(size=(50, 5)) + 1.0
  first = metrics.kid(big_a, big_b, subset_size=20, num_subsets=5, seed=7)
  assert first == metrics.kid(big_a, big_b, subset_size=20, num_subsets=5, seed=7)
  sub = np.random.default_rng(7)
  ref = np.mean(
    [
      _kid_loop(big_a[sub.choice(60, 20, replace=False)], big_b[sub.choice(50, 20, replace=False)])
      for _ in range(5)
    ]
  )
  assert first == pytest.approx(ref, rel=1e-10)
  # Another sample of the same distribution: about 0; then growing with a shift.
  same = rng.normal(size=(60, 5))
  shifts = [metrics.kid(big_a, same + s) for s in (0.0, 0.5, 1.0)]
  assert abs(shifts[0]) < 0.1 * shifts[1] and shifts[1] < shifts[2]


def test_recall_at_1_on_hand_made_embeddings():
  # Originals of three people: A near (0, 0), B near (10, 0), C at (5, 8).
  originals = np.array([[0, 0], [0, 1], [10, 0], [10, 1], [5, 8]], np.float32)
  labels = np.array([0, 0, 1, 1, 2])
  # Anonymized: A's first face moved next to B, B's second next to A, the others kept.
  anonymized = np.array([[9.6, 0], [0, 1.2], [10, 0.3], [0.4, 0], [5, 7]], np.float32)
  # Nearest original of each: B, A, B, A, C -> hits for faces 1, 2, 4.
  np.testing.assert_array_equal(metrics.nearest_neighbours(anonymized, originals), [2, 1, 2, 0, 4])
  assert metrics.identification_recall(anonymized, originals, labels) == pytest.approx(3 / 5)
  # Among the anonymized, each one's own entry left out: 0<->2 (A, B), 1<->3 (A, B),
  # 4 -> 1 (C, A): no hits; among the originals every one but C's single face is a hit.
  np.testing.assert_array_equal(
    metrics.nearest_neighbours(anonymized, anonymized, exclude_self=True), [2, 3, 0, 1, 1]
  )
  assert metrics.reidentification_recall(anonymized, labels) == 0.0
  assert metrics.reidentification_recall(originals, labels) == pytest.approx(4 / 5)
  # Blocks (padded to one compiled shape) give the same neighbours as one block.
  rng = np.random.default_rng(5)
  q, g = rng.normal(size=(37, 8)), rng.normal(size=(29, 8))
  brute = np.argmin(((q[:, None] - g[None]) ** 2).sum(-1), axis=1)
  np.testing.assert_array_equal(metrics.nearest_neighbours(q, g, block=8), brute)
  with pytest.raises(ValueError, match='exclude_self'):
    metrics.nearest_neighbours(q, g, exclude_self=True)


class _Bank:
  def __init__(self, n):
    self.num_identities = n
    self.means = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)


class _Generator:
  def __init__(self, n):
    self.bank = _Bank(n)


def test_model_targets_are_seeded_and_never_the_face_s_own_training_identity():
  row = rows_lib.Row('model0', 'm', 'model', generator=_Generator(3), bank_is_this_dataset=True)
  own = np.array([0, 1, 2, -1] * 50)  # -1: a test face, whose identity is not in the bank
  targets = rows_lib.draw_targets(row, own, seed=0, model_index=0, batch_index=4)
  np.testing.assert_array_equal(targets, rows_lib.draw_targets(row, own, 0, 0, 4))
  assert not np.array_equal(targets, rows_lib.draw_targets(row, own, 1, 0, 4))
  picked = targets[:, 0].astype(int)
  assert np.all(picked[own >= 0] != own[own >= 0])
  assert set(picked[own == -1]) == {0, 1, 2}  # test faces: any bank identity
  # A bank from another dataset: its rows are other people, so nothing is excluded.
  other = rows_lib.Row('model0', 'm', 'model', generator=_Generator(3))
  assert set(rows_lib.draw_targets(other, own, 0, 0, 4)[own == 0, 0].astype(int)) == {0, 1, 2}


def test_markdown_shapes_the_paper_tables_and_json_has_no_infinity(tmp_path):
  rows = [
    dict(
      key='original',
      name='Original',
      kind='original',
      detection_hog=100.0,
      detection_cnn=97.5,
      identification=None,
      reidentification=95.0,
      fid=0.0,
      kid=0.001,
      ssim=1.0,
      psnr=math.inf,
    ),
    dict(
      key='model0',
      name='SDGAN run (step 10)',
      kind='model',
      detection_hog=90.0,
      detection_cnn=80.0,
      identification=1.25,
      reidentification=50.0,
      fid=12.3,
      kid=0.02,
      ssim=0.8,
      psnr=22.0,
    ),
  ]
  result = dict(
    dataset_name='sdgan_faces/samples_128/1.0.0',
    split='test',
    num_faces=8,
    num_identities=2,
    resolution=64,
    seed=0,
    embedding='dlib ResNet',
    detectors={'hog': 'dlib HOG', 'cnn': 'dlib CNN (MMOD)'},
    rows=rows,
    warnings=['FID from 8 faces'],
    notes=[],
  )
  text = tables.markdown(result, with_paper=True)
  assert '| Original | 100.00 (99.61) | 97.50 (99.85) | – (–) | 95.00 (95.46) |' in text
  assert '| SDGAN run (step 10) | 12.30 (4.22) | 0.0200 (–) | 0.80 (0.89) | 22.00 (24.37) |' in text
  assert 'Identification: dlib ResNet' in text and '- FID from 8 faces' in text
  assert '| CIAGAN |' in text
  plain = tables.markdown(result)
  assert '(99.61)' not in plain and '| Original | 0.00 | 0.0010 | 1.00 | inf |' in plain
  # Any deep detector takes the paper's SSH column; the columns follow the detectors.
  for row in rows:
    row['detection_blazeface'] = row.pop('detection_cnn')
  result['detectors'] = {'hog': 'dlib HOG', 'blazeface': 'BlazeFace (short + full range)'}
  text = tables.markdown(result, with_paper=True)
  assert (
    '| Models | Detection: dlib HOG (↑) | Detection: BlazeFace (short + full range) (↑) |' in text
  )
  assert '| Original | 100.00 (99.61) | 97.50 (99.85) | – (–) | 95.00 (95.46) |' in text
  path = tables.write_json(result, tmp_path / 'eval.json')
  assert '"psnr": "inf"' in path.read_text()
