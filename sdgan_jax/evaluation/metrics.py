"""The numbers of the paper's Tables 1 and 3 (paper §4.2-4.3, docs/evaluation.md), from
features.

* SSIM and PSNR of each anonymized crop against its original (Table 3), per image, then
  averaged over the set;
* FID: the Fréchet distance between Gaussians fitted to the Inception pool3 features of the
  originals and of the anonymized crops (Table 3), its matrix square root by symmetric
  eigendecompositions (tested against ``scipy.linalg.sqrtm``); KID, the unbiased squared MMD
  with the cubic polynomial kernel, beside it when the set is too small for a stable FID;
* Recall@1 (Table 1): the share of queries whose nearest gallery embedding (Euclidean)
  shows the same person. Identification: anonymized faces against the gallery of
  originals (lower is better); re-identification: anonymized faces among themselves,
  each one's own entry left out (higher is better).

Everything takes numpy or JAX arrays and returns Python floats or numpy arrays. No
TensorFlow here (README.md "Layout"); the accelerator does the per-image and distance work.
"""

from __future__ import annotations

import functools

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

from sdgan_jax import batching, losses

# Below this many images the 2048-d covariance of FID is rank-deficient and FID is biased
# upwards (it needs more samples than feature dimensions); KID is reported beside it.
FID_MIN_IMAGES = 2048


# ---------------------------------------------------------------------------------------
# SSIM and PSNR (Table 3).


@jax.jit
def ssim_psnr(originals: jax.Array, anonymized: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-image SSIM (Gaussian 11x11, sigma 1.5, as the SSIM loss, eq. 5) and PSNR in dB.

  Args:
    originals, anonymized: float [N, H, W, 3] in [0, 1].

  Returns:
    (ssim [N], psnr [N]); PSNR is +inf for an unchanged image (the paper's Fawkes row).
  """
  originals = jnp.asarray(originals, jnp.float32)
  anonymized = jnp.asarray(anonymized, jnp.float32)
  return losses.ssim(anonymized, originals), dm_pix.psnr(anonymized, originals)


# ---------------------------------------------------------------------------------------
# FID and KID (Table 3).


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and covariance [D, D] (float64, unbiased) of features [N, D]."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f'need features [N >= 2, D], got shape {features.shape}')
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix (round-off negatives clipped to 0)."""
  values, vectors = np.linalg.eigh(matrix)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (the FID formula).

  ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``. The trace of the square
  root is taken as ``tr((s1 sigma2 s1)^(1/2))`` with ``s1 = sigma1^(1/2)``: the same
  eigenvalues, but of a symmetric PSD matrix, so two symmetric eigendecompositions replace
  the general matrix square root (faster, and no imaginary round-off).
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(
      f'shapes do not match: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, {sigma2.shape}'
    )
  s1 = _sqrt_psd((sigma1 + sigma1.T) / 2)
  inner = s1 @ sigma2 @ s1
  eigen = np.linalg.eigvalsh((inner + inner.T) / 2)
  trace_sqrt = float(np.sum(np.sqrt(np.clip(eigen, 0.0, None))))
  diff = mu1 - mu2
  value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
  return float(max(value, 0.0))


def fid(features_a, features_b) -> float:
  """FID between two sets of pool3 features [N, 2048] (any D works).

  With no more images than dimensions the covariances have rank < D and
  ``tr((sigma_a sigma_b)^(1/2))`` is the sum of the singular values of
  ``A B^T / sqrt((n-1)(m-1))`` (A, B the centred features): an [n, m] problem instead of a
  [D, D] one, exact, and what makes a per-row FID of a small set cheap.
  """
  a = np.asarray(features_a, np.float64)
  b = np.asarray(features_b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
    raise ValueError(f'need two feature sets [N >= 2, D] of one D, got {a.shape}, {b.shape}')
  if max(len(a), len(b)) > a.shape[1]:
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))
  ca, cb = a - a.mean(axis=0), b - b.mean(axis=0)
  n, m = len(a), len(b)
  trace_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt((n - 1) * (m - 1))
  diff = a.mean(axis=0) - b.mean(axis=0)
  value = diff @ diff + np.sum(ca**2) / (n - 1) + np.sum(cb**2) / (m - 1) - 2.0 * trace_sqrt
  return float(max(value, 0.0))


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def kid(
  features_a, features_b, subset_size: int = 1000, num_subsets: int = 100, seed: int = 0
) -> float:
  """Kernel Inception Distance: unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3.

  Sets no larger than ``subset_size`` are compared whole; larger ones by the mean over
  ``num_subsets`` random subsets of ``subset_size`` each (drawn with ``seed``).
  """
  a = np.asarray(features_a, np.float64)
  b = np.asarray(features_b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
    raise ValueError(f'need two feature sets [N >= 2, D] of one D, got {a.shape}, {b.shape}')
  if max(len(a), len(b)) <= subset_size:
    return _mmd2_unbiased(a, b)
  m = min(len(a), len(b), subset_size)
  rng = np.random.default_rng(seed)
  values = [
    _mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
    for _ in range(num_subsets)
  ]
  return float(np.mean(values))


def _mmd2_unbiased(a: np.ndarray, b: np.ndarray) -> float:
  m, n = len(a), len(b)
  k_aa, k_bb, k_ab = _poly_kernel(a, a), _poly_kernel(b, b), _poly_kernel(a, b)
  # Unbiased: the diagonal (each point against itself) is left out of the within-set sums.
  within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
  within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
  return float(within_a + within_b - 2.0 * k_ab.mean())


# ---------------------------------------------------------------------------------------
# Recall@1 (Table 1).


@functools.partial(jax.jit, static_argnames='exclude_self')
def _nearest_block(queries, rows, gallery, exclude_self: bool):
  """Nearest gallery index of each query; ``rows``: the queries' own gallery rows."""
  d2 = (
    jnp.sum(queries**2, axis=1, keepdims=True)
    - 2.0 * queries @ gallery.T
    + jnp.sum(gallery**2, axis=1)[None, :]
  )
  if exclude_self:
    d2 = jnp.where(jnp.arange(len(gallery))[None, :] == rows[:, None], jnp.inf, d2)
  return jnp.argmin(d2, axis=1)


def nearest_neighbours(
  queries, gallery, exclude_self: bool = False, block: int = 1024
) -> np.ndarray:
  """Index of each query's nearest gallery entry (Euclidean; ties: the lowest index).

  With ``exclude_self`` queries and gallery are the same set and entry i is not its own
  neighbour. Queries go in blocks of ``block`` so that the distance matrix stays small.
  """
  queries = jnp.asarray(queries, jnp.float32)
  gallery = jnp.asarray(gallery, jnp.float32)
  if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
    raise ValueError(f'need embeddings [N, D] and [M, D], got {queries.shape}, {gallery.shape}')
  if exclude_self and queries.shape != gallery.shape:
    raise ValueError('exclude_self needs the queries to be the gallery')
  if len(gallery) < 1 + exclude_self:
    raise ValueError(f'the gallery has {len(gallery)} entries: too few for a nearest neighbour')
  # Fewer queries than a block go as one block of their own size, unpadded.
  out = batching.map_batches(
    lambda chunk, rows: _nearest_block(chunk, rows, gallery, exclude_self),
    queries,
    np.arange(len(queries)),
    batch_size=max(1, min(block, len(queries))),
  )
  return np.zeros([0], np.int64) if out is None else out


def recall_at_1(
  queries, query_labels, gallery, gallery_labels, exclude_self: bool = False
) -> float:
  """Share of queries whose nearest gallery embedding has the query's label."""
  query_labels = np.asarray(query_labels)
  gallery_labels = np.asarray(gallery_labels)
  if len(query_labels) != len(queries) or len(gallery_labels) != len(gallery):
    raise ValueError('one label per embedding is needed')
  if not len(query_labels):
    raise ValueError('no queries')
  nearest = nearest_neighbours(queries, gallery, exclude_self)
  return float(np.mean(gallery_labels[nearest] == query_labels))


def identification_recall(anonymized, originals, labels) -> float:
  """Table 1 "Identification": anonymized face i against the originals of all faces; a hit
  when the nearest original shows i's person (paper: FaceNet Recall@1; lower is better)."""
  return recall_at_1(anonymized, labels, originals, labels)


def reidentification_recall(embeddings, labels) -> float:
  """Table 1 "Re-Identification": each face against the others of the same row; a hit when
  the nearest other one shows the same person (higher is better)."""
  return recall_at_1(embeddings, labels, embeddings, labels, exclude_self=True)
