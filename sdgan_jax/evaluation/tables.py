"""The evaluation's outputs: JSON, Markdown tables shaped like the paper's Tables 1 and 3, and
an image grid (paper §4.2-4.3).

Rows are dicts as ``runner.evaluate`` makes them; ``paper_row`` maps a row to the paper's
CelebA numbers (Table 1 and 3) so that ``--paper`` can print them beside ours.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Paper, CelebA test identities (Table 1: percentages; Table 3). None: the paper gives "–".
# SSH is the paper's deep detector; its weights are not available, and our deep detectors
# (``detection.DEEP_DETECTORS``) are shown beside its numbers.
PAPER_TABLE1 = {
  'original': dict(
    detection_hog=99.61, detection_ssh=99.85, identification=None, reidentification=95.46
  ),
  'pixelate16': dict(
    detection_hog=0.00, detection_ssh=0.00, identification=0.30, reidentification=None
  ),
  'pixelate8': dict(
    detection_hog=0.00, detection_ssh=0.00, identification=0.30, reidentification=None
  ),
  'blur9': dict(
    detection_hog=90.60, detection_ssh=38.60, identification=57.20, reidentification=None
  ),
  'blur17': dict(
    detection_hog=68.40, detection_ssh=0.30, identification=0.50, reidentification=None
  ),
  'model': dict(
    detection_hog=98.12, detection_ssh=99.76, identification=0.05, reidentification=71.72
  ),
}
PAPER_TABLE3 = {'model': dict(fid=4.22, ssim=0.89, psnr=24.37)}
# The paper's other methods, for the record (Tables 1 and 3, CelebA).
PAPER_OTHERS = {
  'DeepPrivacy': dict(
    detection_hog=98.98,
    detection_ssh=99.75,
    identification=0.18,
    reidentification=26.05,
    fid=18.50,
    ssim=0.87,
    psnr=24.55,
  ),
  'CIAGAN': dict(
    detection_hog=97.19,
    detection_ssh=97.96,
    identification=0.14,
    reidentification=67.12,
    fid=56.16,
    ssim=0.77,
    psnr=17.79,
  ),
  'Fawkes': dict(
    detection_hog=99.67,
    detection_ssh=99.80,
    identification=23.70,
    reidentification=86.05,
    fid=28.13,
    ssim=1.00,
    psnr=math.inf,
  ),
}

TABLE1_COLUMNS = ('identification', 'reidentification')  # after the detection columns
PAPER_DETECTION_COLUMNS = ('detection_hog', 'detection_ssh')


def paper_row(row: Mapping[str, Any]) -> dict:
  """The paper's numbers for a row of ours: baselines by name, every model as SDGAN; the
  paper's SSH rate beside each of our deep detectors' columns."""
  key = 'model' if row['kind'] == 'model' else row['key']
  out = {**PAPER_TABLE1.get(key, {}), **PAPER_TABLE3.get(key, {})}
  if 'detection_ssh' in out:
    out.update({f'detection_{k}': out['detection_ssh'] for k in ('cnn', 'blazeface')})
  return out


def _fmt(value, digits: int = 2) -> str:
  if value is None:
    return '–'
  if isinstance(value, float) and math.isinf(value):
    return 'inf'
  if isinstance(value, float) and math.isnan(value):
    return 'nan'
  return f'{value:.{digits}f}'


def _cell(row, column, with_paper: bool, digits: int = 2) -> str:
  ours = _fmt(row.get(column), digits)
  if not with_paper:
    return ours
  paper = paper_row(row)
  return f'{ours} ({_fmt(paper[column], digits)})' if column in paper else f'{ours} (–)'


def markdown(result: Mapping[str, Any], with_paper: bool = False) -> str:
  """Tables 1 and 3 as Markdown (``with_paper``: the paper's CelebA numbers in brackets)."""
  rows = result['rows']
  emb = result['embedding']
  detectors = dict(result['detectors'])
  detection = [f'detection_{k}' for k in detectors]
  names = ' and '.join(detectors.values())
  n, ids = result['num_faces'], result['num_identities']
  lines = [
    f'# Evaluation: {result["dataset_name"]}, split {result["split"]} ({n} faces, {ids} '
    f'identities, {result["resolution"]} px, seed {result["seed"]})',
    '',
    '## Table 1: detection and identification (paper §4.2)',
    '',
    f'Detection: share of crops in which {names} find the face (higher is better; the '
    "paper's columns are Dlib HOG and SSH, whose weights are not available). "
    f'Identification: {emb} Recall@1 of each crop against the originals (lower is better). '
    f'Re-identification: {emb} Recall@1 among the crops of the row (higher is better). '
    'Percentages.'
    + (" In brackets: the paper's CelebA numbers (SSH, FaceNet)." if with_paper else ''),
    '',
    '| Models | '
    + ''.join(f'Detection: {name} (↑) | ' for name in detectors.values())
    + f'Identification: {emb} (↓) | Re-identification: {emb} (↑) |',
    '|---|' + '---|' * (len(detection) + len(TABLE1_COLUMNS)),
  ]
  for row in rows:
    lines.append(
      f'| {row["name"]} | '
      + ' | '.join(_cell(row, c, with_paper) for c in (*detection, *TABLE1_COLUMNS))
      + ' |'
    )
  lines += [
    '',
    '## Table 3: generation quality (paper §4.3)',
    '',
    'FID and KID between the Inception-v3 pool3 features of the crops and of the originals '
    '(lower is better); SSIM and PSNR (dB) of each crop against its original, averaged '
    '(higher is better).' + (" In brackets: the paper's CelebA numbers." if with_paper else ''),
    '',
    '| Models | FID (↓) | KID (↓) | SSIM (↑) | PSNR (↑) |',
    '|---|---|---|---|---|',
  ]
  for row in rows:
    lines.append(
      f'| {row["name"]} | {_cell(row, "fid", with_paper)} | '
      f'{_cell(row, "kid", with_paper, 4)} | {_cell(row, "ssim", with_paper)} | '
      f'{_cell(row, "psnr", with_paper)} |'
    )
  if with_paper:
    lines += [
      '',
      "The paper's other methods (CelebA, Tables 1 and 3; detection columns: Dlib "
      'HOG, SSH; identification: FaceNet):',
      '',
      '| Method | Dlib | SSH | Identification | Re-identification | FID | SSIM | PSNR |',
      '|---|---|---|---|---|---|---|---|',
    ]
    for name, p in PAPER_OTHERS.items():
      lines.append(
        f'| {name} | '
        + ' | '.join(
          _fmt(p[c]) for c in (*PAPER_DETECTION_COLUMNS, *TABLE1_COLUMNS, 'fid', 'ssim', 'psnr')
        )
        + ' |'
      )
  notes = result.get('notes', []) + result.get('warnings', [])
  if notes:
    lines += ['', 'Notes:', ''] + [f'- {note}' for note in notes]
  return '\n'.join(lines) + '\n'


def _jsonable(value):
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.floating, float)):
    value = float(value)
    # JSON has no inf/nan: PSNR of an unchanged image is written as the string "inf".
    return (
      value if math.isfinite(value) else ('inf' if value > 0 else '-inf' if value < 0 else None)
    )
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


def write_json(result: Mapping[str, Any], path: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  path.write_text(json.dumps(_jsonable(result), indent=2, allow_nan=False) + '\n')
  return path


def image_grid(
  rows: Sequence[tuple[str, np.ndarray]], label_width: int = 200, cell: int | None = None
) -> np.ndarray:
  """uint8 grid: one labelled row per (name, images [K, R, R, 3] in [0, 1])."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel

  k, r = rows[0][1].shape[:2]
  cell = cell or max(r, 64)
  pad = 2
  height = len(rows) * (cell + pad) + pad
  width = label_width + k * (cell + pad) + pad
  canvas = Image.new('RGB', (width, height), (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for i, (name, images) in enumerate(rows):
    y = pad + i * (cell + pad)
    draw.text((4, y + cell // 2 - 6), name[:32], fill=(0, 0, 0))
    for j, image in enumerate(np.asarray(images)):
      tile = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
      if tile.size != (cell, cell):
        tile = tile.resize((cell, cell), Image.NEAREST)
      canvas.paste(tile, (label_width + pad + j * (cell + pad), y))
  return np.asarray(canvas)


def write_grid(rows: Sequence[tuple[str, np.ndarray]], path: str | os.PathLike) -> pathlib.Path:
  from PIL import Image  # pylint: disable=import-outside-toplevel

  path = pathlib.Path(path)
  Image.fromarray(image_grid(rows)).save(path)
  return path
