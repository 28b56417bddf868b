"""Face preparation, once, in parallel and resumable: landmarks, crops, masks, semantic maps.

docs/data.md: every image of the split identities goes through ``sdgan_jax.faces`` (dlib HOG
detection, 68 landmarks, eye-aligned crop, jaw-line mask, landmark semantic map); the
records are what ``sdgan_jax.datasets.features`` describes. One face per image: CelebA's
aligned images hold one subject, so the largest detected face is kept (how many images had
more than one face is reported). The modules of the job: ``image_sources`` (where images
come from), ``face_records`` (one image -> one record), ``chunks`` (the folder on disk).

Work is split into fixed chunks of the ordered item list. A pool of processes (spawn
start method; each worker loads the dlib models once) prepares the images; each finished
chunk is written atomically as ``chunks/chunk-NNNNN.npz`` holding its faces, its skipped
images and a fingerprint of its items and settings. A rerun of the same command skips every
chunk already written, so an interrupted run resumes where it stopped; a run with other
settings into the same folder is refused rather than mixed.

Nothing is dropped silently: each image that yields no record is listed in
``skipped.json`` with its reason --

  missing     the file listed in the identity table does not exist
  unreadable  the file cannot be decoded (truncated or corrupt JPEG, not an image)
  no_face     the detector finds no face
  too_small   the largest face's box is under ``min_face_px`` (unreliable landmarks)
  failed      the face pipeline raised (the message is kept)

-- and the counts are printed at the end.

Semantic maps from a trained face parser (``parser=``, ``prepare_data.py --parser WORKDIR``)
instead of the landmark polygons: the workers still detect, align and mask; the main process
runs the restored EAGRNet (``sdgan_jax.parser_inference.TrainedParser``) on each finished
chunk's aligned crops and stores its argmax as the ``semantic`` record. The face mask stays
the landmark mask, the region the generator replaces. The parser's classes are kept as
predicted everywhere, also outside the mask (hair, the skin of the neck, a brow above the
mask's forehead line): outside the mask the input image is kept, and the map there describes
it, as EAGRNet's full-image maps do in the paper (§3.2). So, unlike the polygon maps, classes
1-9 are not confined to the mask. The parser's fingerprint (workdir, step, weights) is part
of every chunk's, so polygon and parser preparations never mix in one folder.

No TensorFlow here (the workers import only numpy, PIL and dlib); ``builder.py`` turns the
prepared folder into a TFDS dataset.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import multiprocessing
import os
import pathlib
import sys
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from sdgan_jax.datasets import celeba_files, face_records
from sdgan_jax.datasets import chunks as chunks_lib
from sdgan_jax.datasets.chunks import CHUNK_DIR, FORMAT_VERSION, MANIFEST, chunk_path, load_manifest
from sdgan_jax.datasets.face_records import SKIP_REASONS, FaceOptions
from sdgan_jax.datasets.image_sources import Item, Payload, Source

SPLIT_FILE = 'split.json'
SKIPPED_FILE = 'skipped.json'


def _parse_chunk(parser, results: list[dict]) -> None:
  """Replaces the polygon maps of a chunk's faces by the parser's (module doc)."""
  from sdgan_jax import semantic_source  # pylint: disable=import-outside-toplevel

  kept = [r for r in results if r['record'] is not None]
  if not kept:
    return
  # One implementation for preparation and inference (the anonymizer, tools/eval.py).
  labels = semantic_source.parse_crops(parser, np.stack([r['record']['image'] for r in kept]))
  for r, semantic in zip(kept, labels):
    r['record']['semantic'] = semantic


@dataclasses.dataclass
class PrepareReport:
  """What a preparation run did.

  Attributes:
    num_items: images to prepare in all (the split identities' images).
    num_chunks: chunks in all.
    chunks_reused: chunks found finished from an earlier run (not recomputed).
    chunks_computed: chunks prepared by this run.
    complete: every chunk is finished.
    images_processed: images this run prepared (the rate's numerator).
    seconds: wall time of this run's preparation, worker start-up included.
    startup_seconds: of which until the first image was done (process start, model load).
    num_faces: records written in all chunks (once complete).
    skipped: {reason: [file names]} over all chunks.
    multi_face: images in which more than one face was found (the largest was kept).
  """

  num_items: int
  num_chunks: int
  chunks_reused: int
  chunks_computed: int
  complete: bool
  images_processed: int
  seconds: float
  startup_seconds: float = 0.0
  num_faces: int = 0
  skipped: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  multi_face: list[str] = dataclasses.field(default_factory=list)

  @property
  def images_per_second(self) -> float:
    return self.images_processed / self.seconds if self.seconds > 0 else 0.0

  @property
  def steady_images_per_second(self) -> float:
    """The rate after the workers started (what a long run approaches)."""
    busy = self.seconds - self.startup_seconds
    return (self.images_processed - 1) / busy if busy > 0 and self.images_processed > 1 else 0.0

  @property
  def skip_counts(self) -> dict[str, int]:
    return {reason: len(self.skipped.get(reason, [])) for reason in SKIP_REASONS}

  def summary(self) -> str:
    counts = ', '.join(f'{k} {v}' for k, v in self.skip_counts.items())
    rate = f'{self.images_per_second:.2f} images/s'
    if self.images_processed >= 50:  # on fewer, start-up and chunking blur the steady rate
      rate += (
        f' ({self.steady_images_per_second:.2f} images/s after '
        f'{self.startup_seconds:.1f} s of worker start-up)'
      )
    lines = [
      f'{self.images_processed} images prepared in {self.seconds:.1f} s: {rate}; '
      f'{self.chunks_computed} chunks computed, {self.chunks_reused} reused from an earlier '
      f'run, of {self.num_chunks}',
    ]
    if self.complete:
      lines.append(
        f'{self.num_faces} faces of {self.num_items} images; skipped '
        f'{sum(self.skip_counts.values())}: {counts}; '
        f'{len(self.multi_face)} images had more than one face (largest kept)'
      )
      for reason, files in self.skipped.items():
        if files:
          more = f' ... and {len(files) - 10} more' if len(files) > 10 else ''
          lines.append(f'  {reason}: {" ".join(files[:10])}{more}')
    else:
      lines.append('not finished: rerun the same command to resume')
    return '\n'.join(lines)


def _manifest(
  out: pathlib.Path,
  items: list[Item],
  chunks: list[list[Item]],
  fingerprints: list[str],
  options: FaceOptions,
  chunk_size: int,
  source_name: str,
  parser_fp: str,
) -> dict:
  manifest = {
    'format_version': FORMAT_VERSION,
    'options': dataclasses.asdict(options),
    'chunk_size': chunk_size,
    'num_items': len(items),
    'source': source_name,
    'items_fingerprint': chunks_lib.items_fingerprint(items, options, parser_fp),
    'chunks': [
      {
        'file': chunk_path(out, i).relative_to(out).as_posix(),
        'fingerprint': fp,
        'num_items': len(c),
      }
      for i, (c, fp) in enumerate(zip(chunks, fingerprints))
    ],
  }
  if parser_fp:
    manifest['semantic_parser'] = parser_fp
  return manifest


def _claim_folder(out: pathlib.Path, manifest: dict, overwrite: bool) -> None:
  """Writes ``manifest`` into ``out``; refuses (or with ``overwrite`` clears) a folder
  prepared with other settings."""
  manifest_path = out / MANIFEST
  if manifest_path.is_file():
    old = json.loads(manifest_path.read_text())
    keys = ('format_version', 'options', 'chunk_size', 'items_fingerprint', 'semantic_parser')
    changed = [k for k in keys if old.get(k) != manifest.get(k)]
    if changed and not overwrite:
      raise ValueError(
        f'{out} was prepared with other settings ({", ".join(changed)} differ: '
        f'{ {k: old.get(k) for k in changed} } vs { {k: manifest.get(k) for k in changed} }); '
        'use another output folder, or overwrite=True (--overwrite) to discard it'
      )
    if changed:
      for stale in (out / CHUNK_DIR).glob('chunk-*.npz'):
        stale.unlink()
  out.mkdir(parents=True, exist_ok=True)
  chunks_lib.write_json(manifest_path, manifest)


@dataclasses.dataclass
class _Run:
  """The chunks one run computes and where they go."""

  out: pathlib.Path
  chunks: list[list[Item]]
  fingerprints: list[str]
  done: set[int]
  pending: list[int]
  options: FaceOptions
  parser: object = None
  computed: int = 0
  first_result: float | None = None

  def write_next_chunk(self, results: list[dict]) -> None:
    index = self.pending[self.computed]
    if self.parser is not None:
      _parse_chunk(self.parser, results)
    chunks_lib.write_chunk(
      chunk_path(self.out, index), self.fingerprints[index], results, self.options.resolution
    )
    self.computed += 1


def _compute_chunks(run: _Run, payloads, workers: int, progress: bool) -> None:
  """Prepares the pending chunks in a pool, writing each as soon as its last image is done."""
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

  todo = [item for i in run.pending for item in run.chunks[i]]
  names = [f for f, _ in todo]
  tasks = ((f, ident, payload) for (f, ident), payload in zip(todo, payloads(names)))
  bar = tqdm(
    total=sum(len(c) for c in run.chunks),
    initial=sum(len(run.chunks[i]) for i in run.done),
    unit='img',
    desc='preparing faces',
    disable=not progress,
    smoothing=0.05,
    dynamic_ncols=True,
  )
  pool = None
  try:
    if workers > 0:
      pool = multiprocessing.get_context('spawn').Pool(
        workers, initializer=face_records.init_worker, initargs=(run.options,)
      )
      results = pool.imap(face_records.work, tasks, chunksize=4)
    else:
      face_records.init_worker(run.options)
      results = map(face_records.work, tasks)
    buffer = []
    for result in results:
      if run.first_result is None:
        run.first_result = time.perf_counter()
      buffer.append(result)
      bar.update(1)
      if len(buffer) == len(run.chunks[run.pending[run.computed]]):
        run.write_next_chunk(buffer)
        buffer = []
  except KeyboardInterrupt:
    print(
      f'\ninterrupted: {len(run.done) + run.computed} of {len(run.chunks)} chunks are '
      f'finished in {run.out}; rerun the same command to resume',
      file=sys.stderr,
    )
    raise
  finally:
    bar.close()
    if pool is not None:
      pool.terminate()
      pool.join()


def _summarise_folder(out: pathlib.Path, report: PrepareReport) -> None:
  """Fills a complete run's face and skip counts from every chunk; writes skipped.json."""
  skipped = collections.defaultdict(list)
  details = []
  for i in range(report.num_chunks):
    with np.load(chunk_path(out, i)) as data:
      report.num_faces += len(data['identity'])
      for entry in json.loads(str(data['skipped'])):
        skipped[entry['reason']].append(entry['filename'])
        details.append(entry)
      report.multi_face.extend(json.loads(str(data['multi_face'])))
  report.skipped = {reason: skipped.get(reason, []) for reason in SKIP_REASONS}
  chunks_lib.write_json(
    out / SKIPPED_FILE,
    {
      'counts': report.skip_counts,
      'num_items': report.num_items,
      'num_faces': report.num_faces,
      'skipped': details,
      'multi_face': report.multi_face,
    },
  )


def prepare_items(
  items: Sequence[Item],
  payloads: Callable[[Sequence[str]], Iterable[Payload]],
  prepared_dir: str | os.PathLike,
  options: FaceOptions = FaceOptions(),
  *,
  workers: int = 1,
  chunk_size: int = 256,
  max_new_chunks: int | None = None,
  overwrite: bool = False,
  progress: bool = True,
  source_name: str = '',
  parser=None,
) -> PrepareReport:
  """Prepares the faces of ``items`` into ``prepared_dir`` (resumable; see module doc).

  Args:
    items: (file name, identity id) in a fixed order.
    payloads: file names -> their payloads (path or bytes), in the same order.
    prepared_dir: output folder (manifest.json, chunks/, skipped.json).
    options: the face settings.
    workers: processes; 0 runs in this process (for debugging).
    chunk_size: images per chunk (the unit of resumption).
    max_new_chunks: stop after computing this many chunks (None: all); an interruption
      that leaves the folder exactly as a killed run would.
    overwrite: discard a folder prepared with other settings instead of refusing it.
    progress: show a tqdm bar.
    source_name: recorded in the manifest.
    parser: None for the landmark-polygon maps, or a callable with a ``fingerprint``
      attribute, uint8 crops [N, R, R, 3] -> uint8 class ids [N, R, R] (e.g.
      ``parser_inference.TrainedParser``) whose output replaces them (module doc).
  """
  out = pathlib.Path(prepared_dir)
  items = [(str(f), int(i)) for f, i in items]
  if not items:
    raise ValueError('no images to prepare: the split selected no identities')
  if chunk_size < 1:
    raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')
  chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
  parser_fp = '' if parser is None else str(parser.fingerprint)
  fingerprints = [chunks_lib.items_fingerprint(c, options, parser_fp) for c in chunks]
  _claim_folder(
    out,
    _manifest(out, items, chunks, fingerprints, options, chunk_size, source_name, parser_fp),
    overwrite,
  )
  done = {
    i for i, fp in enumerate(fingerprints) if chunks_lib.chunk_fingerprint(chunk_path(out, i)) == fp
  }
  pending = [i for i in range(len(chunks)) if i not in done]
  if max_new_chunks is not None:
    pending = pending[: max(0, max_new_chunks)]
  run = _Run(out, chunks, fingerprints, done, pending, options, parser)
  start = time.perf_counter()
  if pending:
    _compute_chunks(run, payloads, workers, progress)
  seconds = time.perf_counter() - start
  report = PrepareReport(
    num_items=len(items),
    num_chunks=len(chunks),
    chunks_reused=len(done),
    chunks_computed=run.computed,
    complete=len(done) + run.computed == len(chunks),
    images_processed=sum(len(chunks[i]) for i in pending[: run.computed]),
    seconds=seconds,
    startup_seconds=(run.first_result - start) if run.first_result is not None else 0.0,
  )
  if report.complete:
    _summarise_folder(out, report)
  return report


@dataclasses.dataclass
class PreparedData:
  """A prepared folder: its split (with prepared counts) and the run's report."""

  prepared_dir: pathlib.Path
  split: celeba_files.IdentitySplit
  report: PrepareReport


def prepare_source(
  source: Source,
  prepared_dir: str | os.PathLike,
  options: FaceOptions = FaceOptions(),
  *,
  num_train: int | None = celeba_files.PAPER_NUM_TRAIN,
  num_test: int | None = celeba_files.PAPER_NUM_TEST,
  min_images: int = celeba_files.PAPER_MIN_IMAGES,
  **kwargs,
) -> PreparedData:
  """Splits ``source``'s identities (paper §4.1) and prepares the split's images.

  Only the images of the train and test identities are prepared (about 47k of CelebA's
  202,599). The split is saved as ``split.json`` in ``prepared_dir``; once the run is
  complete it also holds the prepared (face found) image counts per split.

  Args:
    source: the images and identity table.
    prepared_dir: output folder.
    options: the face settings.
    num_train, num_test, min_images: the split rule's parameters (``identity_split``).
    **kwargs: passed to ``prepare_items`` (workers, chunk_size, max_new_chunks, ...).
  """
  out = pathlib.Path(prepared_dir)
  index = source.index()
  split = celeba_files.identity_split(
    index, num_train=num_train, num_test=num_test, min_images=min_images, source=source.name
  )
  items = [(f, i) for f, i in index.items() if split.split_of(i) is not None]
  report = prepare_items(items, source.payloads, out, options, source_name=source.name, **kwargs)
  if report.complete:
    counts = collections.Counter()
    for chunk in load_manifest(out)['chunks']:
      with np.load(out / chunk['file']) as data:
        for ident in data['identity']:
          counts[split.split_of(int(ident))] += 1
    split.images_prepared = {'train': counts['train'], 'test': counts['test']}
  split.save(out / SPLIT_FILE)
  return PreparedData(prepared_dir=out, split=split, report=report)
