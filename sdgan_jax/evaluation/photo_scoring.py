"""Scoring a face detector on the photo set (``evaluation.photo_set``): per image which
faces a box covers and which boxes are false, with the recall set's rules
(``coverage.covers`` and ``coverage.false_box_mask``, docs/detection.md), the per-split
and per-variant tables, and drawings of the ground truth with the detections.
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Sequence

import numpy as np

from sdgan_jax.evaluation import coverage
from sdgan_jax.evaluation.photo_set import PhotoImage

GOAL_PX = 24  # recall is also reported on faces at least this wide


def score_image(image: PhotoImage, boxes: np.ndarray) -> tuple[list[bool], np.ndarray]:
  """(per face: covered by one of ``boxes``?, bool [N]: which boxes are false), with the
  recall set's rules; ``boxes`` [N, 4] have exclusive ends."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  found = [any(coverage.covers(b, face) for b in boxes) for face in image.faces]
  return found, coverage.false_box_mask(boxes, image.faces, image.ignore)


def _row(
  faces: int, found: int, faces_goal: int, found_goal: int, false: int, images: int, seconds: float
) -> dict:
  return {
    'images': images,
    'faces': faces,
    'found': found,
    'recall': round(found / faces, 4) if faces else None,
    f'faces_{GOAL_PX}px': faces_goal,
    f'found_{GOAL_PX}px': found_goal,
    f'recall_{GOAL_PX}px': round(found_goal / faces_goal, 4) if faces_goal else None,
    'false_boxes': false,
    'false_per_100_faces': round(100 * false / faces, 1) if faces else None,
    'seconds_per_image': round(seconds / max(images, 1), 3),
  }


def summarize(
  images: Sequence[PhotoImage],
  found: Sequence[Sequence[bool]],
  false: Sequence[int],
  seconds: Sequence[float],
) -> dict:
  """split -> variant (and 'all') -> faces, found, recall (also on faces of ``GOAL_PX`` and
  more), false boxes (also per 100 real faces) and seconds per image."""
  acc: dict[str, dict[str, np.ndarray]] = {}
  for image, hits, n_false, sec in zip(images, found, false, seconds):
    big = [h for f, h in zip(image.faces, hits) if f.size >= GOAL_PX]
    counts = np.array([len(hits), sum(hits), len(big), sum(big), n_false, 1, sec])
    for key in (image.variant, 'all'):
      table = acc.setdefault(image.split, {})
      table[key] = table.get(key, 0) + counts
  return {
    split: {key: _row(*(int(v) for v in c[:6]), float(c[6])) for key, c in table.items()}
    for split, table in acc.items()
  }


def evaluate(
  detect_fn,
  images: Sequence[PhotoImage],
  warmup: bool = True,
  draw_dir: str | os.PathLike | None = None,
) -> dict:
  """Scores ``detect_fn(image) -> Detections`` (inclusive boxes) on ``images``.

  Returns the ``summarize`` table ('sets'), and per false box and per missed face the
  image, box, size and score ('false_boxes', 'missed'), for inspection. With ``draw_dir``,
  writes each image with its ground truth and detections drawn (``draw``).
  """
  if warmup and images:
    detect_fn(images[0].image)
  found, false, seconds, false_list, missed = [], [], [], [], []
  for image in images:
    start = time.perf_counter()
    detections = detect_fn(image.image)
    seconds.append(time.perf_counter() - start)
    boxes = np.asarray(detections.boxes, np.float64).reshape(-1, 4) + [0, 0, 1, 1]
    hits, mask = score_image(image, boxes)
    found.append(hits)
    false.append(int(mask.sum()))
    for i in np.flatnonzero(mask):
      b = boxes[i]
      sources = getattr(detections, 'sources', None)
      false_list.append(
        {
          'image': image.name,
          'split': image.split,
          'box': [round(float(v), 1) for v in b],
          'width': round(float(b[2] - b[0]), 1),
          'height': round(float(b[3] - b[1]), 1),
          'score': round(float(detections.scores[i]), 4),
          'sources': list(sources[i]) if sources else None,
        }
      )
    for face, hit in zip(image.faces, hits):
      if not hit:
        missed.append(
          {
            'image': image.name,
            'split': image.split,
            'size': round(face.size, 1),
            'source': face.source,
            'box': [round(float(v), 1) for v in face.box],
          }
        )
    if draw_dir is not None:
      safe = image.name.replace('/', '_')
      draw(image, boxes, detections.scores, pathlib.Path(draw_dir) / f'{safe}.jpg', mask)
  return {
    'sets': summarize(images, found, false, seconds),
    'false_boxes': false_list,
    'missed': missed,
  }


def draw(
  image: PhotoImage,
  boxes: np.ndarray | None = None,
  scores=None,
  path: str | os.PathLike | None = None,
  false_mask=None,
):
  """``image`` with its ground truth (green: face boxes and key points; yellow: ignore
  regions) and ``boxes`` (exclusive ends; red when false, orange otherwise, with their
  score); written to ``path`` when given. Returns the PIL image."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel

  pil = Image.fromarray(image.image)
  d = ImageDraw.Draw(pil)
  width = max(1, round(max(pil.size) / 500))
  for region in image.ignore:
    d.rectangle([float(v) for v in region], outline=(255, 255, 0), width=width)
  for face in image.faces:
    x0, y0, x1, y1 = face.box
    d.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(0, 255, 0), width=width)
    r = max(2.0, face.size / 40)
    for (x, y), vis in zip(face.keypoints, face.visible):
      d.ellipse(
        [x - r, y - r, x + r, y + r], outline=(0, 255, 0) if vis else (0, 90, 0), width=width
      )
  if boxes is not None:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
      bad = false_mask is None or bool(false_mask[i])
      d.rectangle(
        [x0, y0, x1 - 1, y1 - 1], outline=(255, 0, 0) if bad else (255, 150, 0), width=width
      )
      if scores is not None:
        d.text((x0 + 2, max(0.0, y0 - 12)), f'{float(scores[i]):.2f}', fill=(255, 0, 0))
  if path is not None:
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    pil.save(path, quality=85)
  return pil
