"""Face-parsing metrics: the pixel confusion matrix, pixel accuracy and mean IoU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(labels, predictions, num_classes: int, weights=None) -> jax.Array:
  """[C, C] pixel counts, rows = true class, columns = predicted class."""
  labels = jnp.asarray(labels, jnp.int32).reshape(-1)
  predictions = jnp.asarray(predictions, jnp.int32).reshape(-1)
  w = None if weights is None else jnp.asarray(weights, jnp.float32).reshape(-1)
  flat = jnp.bincount(
    labels * num_classes + predictions, weights=w, length=num_classes * num_classes
  )
  return flat.reshape(num_classes, num_classes)


def segmentation_metrics(confusion, class_names=None) -> dict[str, float]:
  """Pixel accuracy, mean IoU and per-class IoU from a confusion matrix.

  A class absent from both the labels and the predictions has no IoU and is left out of the
  mean (the landmark-polygon maps never contain 'hair', for one).
  """
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - tp
  present = union > 0
  iou = np.where(present, tp / np.maximum(union, 1), np.nan)
  out = {
    'eval/pixel_accuracy': float(tp.sum() / max(confusion.sum(), 1)),
    'eval/miou': float(np.mean(iou[present])) if present.any() else 0.0,
  }
  for i, name in enumerate(class_names or []):
    if present[i]:
      out[f'eval/iou_{name}'] = float(iou[i])
  return out
