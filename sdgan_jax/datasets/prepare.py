"""Face preparation, once, in parallel and resumable: landmarks, crops, masks, semantic maps.

DESIGN §3: every image of the split identities goes through ``sdgan_jax.faces`` (dlib HOG
detection, 68 landmarks, eye-aligned crop, jaw-line mask, landmark semantic map); the
records are what ``sdgan_jax.datasets.features`` describes. One face per image: CelebA's
aligned images hold one subject, so the largest detected face is kept (how many images had
more than one face is reported).

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
runs the restored EAGRNet (``sdgan_jax.train_parser.TrainedParser``) on each finished
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
import hashlib
import io
import json
import multiprocessing
import os
import pathlib
import sys
import time
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from sdgan_jax.datasets import celeba_files, features

FORMAT_VERSION = 1
SKIP_REASONS = ('missing', 'unreadable', 'no_face', 'too_small', 'failed')
MANIFEST = 'manifest.json'
SPLIT_FILE = 'split.json'
SKIPPED_FILE = 'skipped.json'
CHUNK_DIR = 'chunks'

# (file name, identity id)
Item = tuple[str, int]
# a path to read, or the encoded image itself
Payload = str | bytes


@dataclasses.dataclass(frozen=True)
class FaceOptions:
  """How each image is turned into a face record (stored in the manifest).

  Attributes:
    resolution: crop size R (128, DESIGN §3).
    detector: 'hog' or 'cnn' (``sdgan_jax.faces.detect.FaceDetector``).
    upsample: detector upsampling steps (1: faces down to ~40 px; CelebA's are ~100 px).
    min_face_px: a largest face with a shorter box side under this is skipped as too_small.
  """

  resolution: int = features.DEFAULT_RESOLUTION
  detector: str = 'hog'
  upsample: int = 1
  min_face_px: float = 40.0


class Source:
  """Where images come from: an ordered identity table and a way to get each image.

  Subclasses set ``name`` and implement ``index`` and ``payloads``.
  """

  name = 'source'

  def index(self) -> dict[str, int]:
    """{file name: identity id} in a fixed order (the order of the chunks)."""
    raise NotImplementedError

  def payloads(self, filenames: Sequence[str]) -> Iterator[Payload]:
    """One payload (a path or the encoded bytes) per file name, in the order given."""
    raise NotImplementedError


class FolderSource(Source):
  """Images in a folder, identities from a table: the official CelebA files, the samples.

  Args:
    images: the image folder.
    identities: {file name: identity id}; ordered by file name here.
    name: recorded in the manifest.
  """

  def __init__(self, images: str | os.PathLike, identities: Mapping[str, int],
               name: str = 'folder'):
    self.images = pathlib.Path(images)
    self.identities = {f: int(identities[f]) for f in sorted(identities)}
    self.name = name

  def index(self) -> dict[str, int]:
    return dict(self.identities)

  def payloads(self, filenames: Sequence[str]) -> Iterator[Payload]:
    for filename in filenames:
      yield str(self.images / filename)


def celeba_folder_source(celeba_dir: str | os.PathLike) -> FolderSource:
  """The official CelebA files of ``celeba_dir`` (see ``celeba_files``) as a source."""
  files = celeba_files.load_celeba_dir(celeba_dir)
  return FolderSource(files.images, files.identities, name=f'celeba_files:{files.root}')


# ---------------------------------------------------------------------------------------
# One image -> one record (runs in the worker processes).

_WORKER = {}


def _init_worker(options: FaceOptions) -> None:
  # The 68-point model takes about a second to load: once per worker, not per image.
  # A failing pool initializer makes multiprocessing respawn workers forever, so the error
  # is kept and raised by the first task instead, which ends the run with its message.
  try:
    from sdgan_jax.faces import detect  # pylint: disable=import-outside-toplevel

    _WORKER['detector'] = detect.FaceDetector(options.detector, upsample=options.upsample)
    _WORKER['predictor'] = detect.LandmarkPredictor()
    _WORKER['options'] = options
    _WORKER.pop('error', None)
  except Exception as e:  # pylint: disable=broad-except
    _WORKER['error'] = f'{type(e).__name__}: {e}'


def decode_image(payload: Payload) -> np.ndarray:
  """uint8 RGB [H, W, 3] from a path or encoded bytes; raises OSError if unreadable."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  source = io.BytesIO(payload) if isinstance(payload, (bytes, bytearray)) else payload
  with Image.open(source) as im:
    im.load()  # decodes now: a truncated JPEG raises here, not later
    return np.asarray(im.convert('RGB'))


def prepare_image(payload: Payload, options: FaceOptions, detector=None,
                  predictor=None) -> dict:
  """Prepares the largest face of one image.

  Returns:
    {'record': {image, mask, semantic, landmarks, box} or None, 'reason': a
    ``SKIP_REASONS`` entry or None, 'detail': str, 'num_faces': int}.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from sdgan_jax.faces import detect, pipeline  # pylint: disable=import-outside-toplevel

  def skipped(reason, detail, num_faces=0):
    return {'record': None, 'reason': reason, 'detail': detail, 'num_faces': num_faces}

  try:
    image = decode_image(payload)
  except FileNotFoundError as e:
    return skipped('missing', str(e))
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    return skipped('unreadable', f'{type(e).__name__}: {e}')
  detector = detector or detect.FaceDetector(options.detector, upsample=options.upsample)
  predictor = predictor or detect.LandmarkPredictor()
  try:
    found = detector(image)
    if not len(found):
      return skipped('no_face', f'{image.shape[1]}x{image.shape[0]} image')
    sides = found.boxes[:, 2:] - found.boxes[:, :2] + 1
    areas = sides[:, 0] * sides[:, 1]
    box = found.boxes[int(np.argmax(areas))]
    size = float(min(box[2] - box[0], box[3] - box[1]) + 1)
    if size < options.min_face_px:
      return skipped('too_small', f'largest face {size:.0f} px < {options.min_face_px:g} px',
                     len(found))
    landmarks = predictor(image, box)
    aligned, mask, semantic = pipeline.prepare_face(image, landmarks, options.resolution)
  except Exception as e:  # pylint: disable=broad-except
    # One bad image must not stop hours of work; it is reported, never dropped silently.
    return skipped('failed', f'{type(e).__name__}: {e}', 0)
  record = {'image': aligned.crop, 'mask': mask, 'semantic': semantic,
            'landmarks': aligned.landmarks.astype(np.float32), 'box': np.asarray(box, np.float32)}
  return {'record': record, 'reason': None, 'detail': '', 'num_faces': len(found)}


def _work(task):
  if 'error' in _WORKER:
    raise RuntimeError(f'could not load the face models in a worker: {_WORKER["error"]}')
  filename, identity, payload = task
  result = prepare_image(payload, _WORKER['options'], _WORKER['detector'], _WORKER['predictor'])
  result['filename'] = filename
  result['identity'] = identity
  return result


# ---------------------------------------------------------------------------------------
# Chunks, manifest, resume.

def _fingerprint(items: Sequence[Item], options: FaceOptions, parser: str = '') -> str:
  digest = hashlib.sha256(json.dumps(dataclasses.asdict(options), sort_keys=True).encode())
  if parser:  # only then: the polygon preparations keep their fingerprints
    digest.update(f'parser\t{parser}\n'.encode())
  for filename, identity in items:
    digest.update(f'{filename}\t{identity}\n'.encode())
  return digest.hexdigest()[:32]


def chunk_path(prepared_dir: str | os.PathLike, index: int) -> pathlib.Path:
  return pathlib.Path(prepared_dir) / CHUNK_DIR / f'chunk-{index:05d}.npz'


def _chunk_fingerprint(path: pathlib.Path) -> str | None:
  if not path.is_file():
    return None
  try:
    with np.load(path) as data:
      return str(data['fingerprint'])
  except Exception:  # pylint: disable=broad-except
    return None  # unreadable: recompute it


def _write_chunk(path: pathlib.Path, fingerprint: str, results: list[dict],
                 resolution: int) -> None:
  kept = [r for r in results if r['record'] is not None]
  r = resolution

  def stack(key, shape, dtype):
    if not kept:
      return np.zeros((0, *shape), dtype)
    return np.stack([k['record'][key] for k in kept]).astype(dtype)

  skipped = [{'filename': x['filename'], 'identity': int(x['identity']), 'reason': x['reason'],
              'detail': x['detail']} for x in results if x['record'] is None]
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


def _write_json(path: pathlib.Path, data) -> None:
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(data, indent=1) + '\n')
  os.replace(tmp, path)


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
      rate += (f' ({self.steady_images_per_second:.2f} images/s after '
               f'{self.startup_seconds:.1f} s of worker start-up)')
    lines = [
        f'{self.images_processed} images prepared in {self.seconds:.1f} s: {rate}; '
        f'{self.chunks_computed} chunks computed, {self.chunks_reused} reused from an earlier '
        f'run, of {self.num_chunks}',
    ]
    if self.complete:
      lines.append(f'{self.num_faces} faces of {self.num_items} images; skipped '
                   f'{sum(self.skip_counts.values())}: {counts}; '
                   f'{len(self.multi_face)} images had more than one face (largest kept)')
      for reason, files in self.skipped.items():
        if files:
          more = f' ... and {len(files) - 10} more' if len(files) > 10 else ''
          lines.append(f'  {reason}: {" ".join(files[:10])}{more}')
    else:
      lines.append('not finished: rerun the same command to resume')
    return '\n'.join(lines)


def prepare_items(items: Sequence[Item], payloads: Callable[[Sequence[str]], Iterable[Payload]],
                  prepared_dir: str | os.PathLike, options: FaceOptions = FaceOptions(), *,
                  workers: int = 1, chunk_size: int = 256, max_new_chunks: int | None = None,
                  overwrite: bool = False, progress: bool = True,
                  source_name: str = '', parser=None) -> PrepareReport:
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
      ``train_parser.TrainedParser``) whose output replaces them (module doc).
  """
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel

  out = pathlib.Path(prepared_dir)
  items = [(str(f), int(i)) for f, i in items]
  if not items:
    raise ValueError('no images to prepare: the split selected no identities')
  if chunk_size < 1:
    raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')
  chunks = [items[i:i + chunk_size] for i in range(0, len(items), chunk_size)]
  parser_fp = '' if parser is None else str(parser.fingerprint)
  fingerprints = [_fingerprint(c, options, parser_fp) for c in chunks]
  manifest = {
      'format_version': FORMAT_VERSION, 'options': dataclasses.asdict(options),
      'chunk_size': chunk_size, 'num_items': len(items), 'source': source_name,
      'items_fingerprint': _fingerprint(items, options, parser_fp),
      'chunks': [{'file': chunk_path(out, i).relative_to(out).as_posix(), 'fingerprint': fp,
                  'num_items': len(c)} for i, (c, fp) in enumerate(zip(chunks, fingerprints))],
  }
  if parser_fp:
    manifest['semantic_parser'] = parser_fp
  manifest_path = out / MANIFEST
  if manifest_path.is_file():
    old = json.loads(manifest_path.read_text())
    keys = ('format_version', 'options', 'chunk_size', 'items_fingerprint', 'semantic_parser')
    changed = [k for k in keys if old.get(k) != manifest.get(k)]
    if changed and not overwrite:
      raise ValueError(
          f'{out} was prepared with other settings ({", ".join(changed)} differ: '
          f'{ {k: old.get(k) for k in changed} } vs { {k: manifest.get(k) for k in changed} }); '
          'use another output folder, or overwrite=True (--overwrite) to discard it')
    if changed:
      for stale in (out / CHUNK_DIR).glob('chunk-*.npz'):
        stale.unlink()
  out.mkdir(parents=True, exist_ok=True)
  _write_json(manifest_path, manifest)

  done = {i for i, fp in enumerate(fingerprints) if _chunk_fingerprint(chunk_path(out, i)) == fp}
  pending = [i for i in range(len(chunks)) if i not in done]
  if max_new_chunks is not None:
    pending = pending[:max(0, max_new_chunks)]
  todo = [item for i in pending for item in chunks[i]]

  start = time.perf_counter()
  first_result = None
  computed = 0
  if todo:
    names = [f for f, _ in todo]
    tasks = ((f, ident, payload) for (f, ident), payload in zip(todo, payloads(names)))
    bar = tqdm(total=len(items), initial=sum(len(chunks[i]) for i in done), unit='img',
               desc='preparing faces', disable=not progress, smoothing=0.05,
               dynamic_ncols=True)
    pool = None
    try:
      if workers > 0:
        pool = multiprocessing.get_context('spawn').Pool(
            workers, initializer=_init_worker, initargs=(options,))
        results = pool.imap(_work, tasks, chunksize=4)
      else:
        _init_worker(options)
        results = map(_work, tasks)
      buffer = []
      for result in results:
        if first_result is None:
          first_result = time.perf_counter()
        buffer.append(result)
        bar.update(1)
        index = pending[computed]
        if len(buffer) == len(chunks[index]):
          if parser is not None:
            _parse_chunk(parser, buffer)
          _write_chunk(chunk_path(out, index), fingerprints[index], buffer, options.resolution)
          buffer = []
          computed += 1
    except KeyboardInterrupt:
      print(f'\ninterrupted: {len(done) + computed} of {len(chunks)} chunks are finished in '
            f'{out}; rerun the same command to resume', file=sys.stderr)
      raise
    finally:
      bar.close()
      if pool is not None:
        pool.terminate()
        pool.join()
  seconds = time.perf_counter() - start

  report = PrepareReport(
      num_items=len(items), num_chunks=len(chunks), chunks_reused=len(done),
      chunks_computed=computed, complete=len(done) + computed == len(chunks),
      images_processed=sum(len(chunks[i]) for i in pending[:computed]), seconds=seconds,
      startup_seconds=(first_result - start) if first_result is not None else 0.0)
  if report.complete:
    skipped = collections.defaultdict(list)
    details = []
    for i in range(len(chunks)):
      with np.load(chunk_path(out, i)) as data:
        report.num_faces += len(data['identity'])
        for entry in json.loads(str(data['skipped'])):
          skipped[entry['reason']].append(entry['filename'])
          details.append(entry)
        report.multi_face.extend(json.loads(str(data['multi_face'])))
    report.skipped = {reason: skipped.get(reason, []) for reason in SKIP_REASONS}
    _write_json(out / SKIPPED_FILE, {
        'counts': report.skip_counts, 'num_items': len(items), 'num_faces': report.num_faces,
        'skipped': details, 'multi_face': report.multi_face})
  return report


def iter_prepared(prepared_dir: str | os.PathLike) -> Iterator[dict]:
  """The prepared faces of a finished folder, chunk by chunk, in item order.

  Yields dicts with image, mask, semantic, landmarks, box, identity and filename.
  """
  out = pathlib.Path(prepared_dir)
  manifest = load_manifest(out)
  for i, chunk in enumerate(manifest['chunks']):
    path = out / chunk['file']
    if _chunk_fingerprint(path) != chunk['fingerprint']:
      raise FileNotFoundError(f'{path} is missing or stale: the preparation in {out} did not '
                              'finish; rerun it to resume')
    with np.load(path) as data:
      arrays = {k: data[k] for k in ('image', 'mask', 'semantic', 'landmarks', 'box',
                                     'identity', 'filename')}
    for j in range(len(arrays['identity'])):
      yield {k: v[j] for k, v in arrays.items()} | {'chunk': i}


def load_manifest(prepared_dir: str | os.PathLike) -> dict:
  path = pathlib.Path(prepared_dir) / MANIFEST
  if not path.is_file():
    raise FileNotFoundError(f'{path} not found: prepare the data first '
                            '(python tools/prepare_data.py ...)')
  return json.loads(path.read_text())


@dataclasses.dataclass
class PreparedData:
  """A prepared folder: its split (with prepared counts) and the run's report."""

  prepared_dir: pathlib.Path
  split: celeba_files.IdentitySplit
  report: PrepareReport


def prepare_source(source: Source, prepared_dir: str | os.PathLike,
                   options: FaceOptions = FaceOptions(), *,
                   num_train: int | None = celeba_files.PAPER_NUM_TRAIN,
                   num_test: int | None = celeba_files.PAPER_NUM_TEST,
                   min_images: int = celeba_files.PAPER_MIN_IMAGES, **kwargs) -> PreparedData:
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
  split = celeba_files.identity_split(index, num_train=num_train, num_test=num_test,
                                      min_images=min_images, source=source.name)
  items = [(f, i) for f, i in index.items() if split.split_of(i) is not None]
  report = prepare_items(items, source.payloads, out, options, source_name=source.name,
                         **kwargs)
  if report.complete:
    counts = collections.Counter()
    for chunk in load_manifest(out)['chunks']:
      with np.load(out / chunk['file']) as data:
        for ident in data['identity']:
          counts[split.split_of(int(ident))] += 1
    split.images_prepared = {'train': counts['train'], 'test': counts['test']}
  split.save(out / SPLIT_FILE)
  return PreparedData(prepared_dir=out, split=split, report=report)
