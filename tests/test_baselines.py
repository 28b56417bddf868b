"""Blur and pixelation baselines against direct numpy/scipy computations."""

import numpy as np
import pytest
from scipy import signal

from sdgan_jax import baselines


def _reference_blur(image, k):
  sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
  x = np.arange(k) - k // 2
  g = np.exp(-(x**2) / (2 * sigma**2))
  kernel = np.outer(g, g) / np.sum(g) ** 2
  norm = signal.convolve2d(np.ones(image.shape[:2]), kernel, mode='same')
  return np.stack(
    [signal.convolve2d(image[..., c], kernel, mode='same') / norm for c in range(image.shape[-1])],
    -1,
  )


@pytest.mark.parametrize('k', [9, 17])
def test_gaussian_blur_matches_a_direct_convolution(k):
  image = np.random.default_rng(0).uniform(size=(40, 36, 3)).astype(np.float32)
  np.testing.assert_allclose(
    baselines.gaussian_blur(image, k), _reference_blur(image, k), atol=1e-5
  )


def test_pixelate_averages_blocks():
  images = np.random.default_rng(1).uniform(size=(2, 64, 64, 3)).astype(np.float32)
  out = baselines.pixelate(images, 16)
  blocks = images.reshape(2, 16, 4, 16, 4, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(out, np.repeat(np.repeat(blocks, 4, 1), 4, 2), atol=1e-6)
  odd = baselines.pixelate(images[0, :50, :37], 8)  # any region size works
  assert len(np.unique(odd[..., 0])) <= 64 and odd.shape == (50, 37, 3)
  np.testing.assert_allclose(odd.mean(), images[0, :50, :37].mean(), atol=0.02)


def test_mask_limits_the_change_and_names_are_checked():
  images = np.random.default_rng(2).uniform(size=(1, 32, 32, 3)).astype(np.float32)
  mask = np.zeros((1, 32, 32, 1))
  mask[:, 8:24, 8:24] = 1
  out = baselines.apply_baseline('mask', images, mask)
  np.testing.assert_array_equal(out[:, :8], images[:, :8])
  assert np.all(out[:, 8:24, 8:24] == 0.5)
  with pytest.raises(ValueError, match='unknown baseline'):
    baselines.apply_baseline('swirl', images)
  with pytest.raises(ValueError, match='odd'):
    baselines.gaussian_blur(images, 8)
