"""The prepared folder on disk (docs/data.md): the manifest, the chunk files and their
fingerprints, and reading the finished faces back.

Each chunk is written atomically as ``chunks/chunk-NNNNN.npz`` holding its faces, its
skipped images and a fingerprint of its items and settings, so a rerun recognises the
chunks already finished and a run with other settings cannot mix into them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np

from sdgan_jax.datasets import features
from sdgan_jax.datasets.face_records import FaceOptions
from sdgan_jax.datasets.image_sources import Item

FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
CHUNK_DIR = 'chunks'


def items_fingerprint(items: Sequence[Item], options: FaceOptions, parser: str = '') -> str:
  """A digest of the items and settings that make a chunk (or a whole preparation)."""
  digest = hashlib.sha256(json.dumps(dataclasses.asdict(options), sort_keys=True).encode())
  if parser:  # only then: the polygon preparations keep their fingerprints
    digest.update(f'parser\t{parser}\n'.encode())
  for filename, identity in items:
    digest.update(f'{filename}\t{identity}\n'.encode())
  return digest.hexdigest()[:32]


def chunk_path(prepared_dir: str | os.PathLike, index: int) -> pathlib.Path:
  return pathlib.Path(prepared_dir) / CHUNK_DIR / f'chunk-{index:05d}.npz'


def chunk_fingerprint(path: pathlib.Path) -> str | None:
  """The fingerprint a chunk file was written with; None if missing or unreadable."""
  if not path.is_file():
    return None
  try:
    with np.load(path) as data:
      return str(data['fingerprint'])
  except Exception:  # pylint: disable=broad-except
    return None  # unreadable: recompute it


def write_chunk(path: pathlib.Path, fingerprint: str, results: list[dict], resolution: int) -> None:
  """Writes one chunk's ``prepare_image`` results (named by file and identity) atomically."""
  kept = [r for r in results if r['record'] is not None]
  r = resolution

  def stack(key, shape, dtype):
    if not kept:
      return np.zeros((0, *shape), dtype)
    return np.stack([k['record'][key] for k in kept]).astype(dtype)

  skipped = [
    {
      'filename': x['filename'],
      'identity': int(x['identity']),
      'reason': x['reason'],
      'detail': x['detail'],
    }
    for x in results
    if x['record'] is None
  ]
  multi = [x['filename'] for x in results if x['num_faces'] > 1]
  arrays = {
    'image': stack('image', (r, r, 3), np.uint8),
    'mask': stack('mask', (r, r, 1), np.uint8),
    'semantic': stack('semantic', (r, r, 1), np.uint8),
    'landmarks': stack('landmarks', (features.NUM_LANDMARKS, 2), np.float32),
    'box': stack('box', (4,), np.float32),
    'identity': np.array([k['identity'] for k in kept], np.int64),
    'filename': np.array([k['filename'] for k in kept], dtype=str),
    'fingerprint': np.array(fingerprint),
    'skipped': np.array(json.dumps(skipped)),
    'multi_face': np.array(json.dumps(multi)),
    'num_items': np.array(len(results), np.int64),
  }
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp')
  with open(tmp, 'wb') as f:
    np.savez_compressed(f, **arrays)
  os.replace(tmp, path)  # atomic: an interrupted write never looks like a finished chunk


def write_json(path: pathlib.Path, data) -> None:
  """Writes ``data`` as JSON atomically (a temporary file, then a rename)."""
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(data, indent=1) + '\n')
  os.replace(tmp, path)


def load_manifest(prepared_dir: str | os.PathLike) -> dict:
  path = pathlib.Path(prepared_dir) / MANIFEST
  if not path.is_file():
    raise FileNotFoundError(
      f'{path} not found: prepare the data first (python tools/prepare_data.py ...)'
    )
  return json.loads(path.read_text())


def iter_prepared(prepared_dir: str | os.PathLike) -> Iterator[dict]:
  """The prepared faces of a finished folder, chunk by chunk, in item order.

  Yields dicts with image, mask, semantic, landmarks, box, identity and filename.
  """
  out = pathlib.Path(prepared_dir)
  manifest = load_manifest(out)
  for i, chunk in enumerate(manifest['chunks']):
    path = out / chunk['file']
    if chunk_fingerprint(path) != chunk['fingerprint']:
      raise FileNotFoundError(
        f'{path} is missing or stale: the preparation in {out} did not finish; rerun it to resume'
      )
    with np.load(path) as data:
      arrays = {
        k: data[k]
        for k in ('image', 'mask', 'semantic', 'landmarks', 'box', 'identity', 'filename')
      }
    for j in range(len(arrays['identity'])):
      yield {k: v[j] for k, v in arrays.items()} | {'chunk': i}
