"""TFDS dataset of prepared faces (docs/data.md), and TFDS's stock ``celeb_a`` as a source.

``sdgan_faces`` holds one example per prepared face in the record format of
``sdgan_jax.datasets.features`` (image, mask, semantic, landmarks, identity, label,
filename), with the splits of paper §4.1: 'train' (the training identities' faces) and
'test' (the test identities'), ``label`` being the identity's index in its split. It is
written as ArrayRecord, so the input pipeline can read it by random access
(``builder.as_data_source(split)`` or ``tfds.data_source('sdgan_faces/celeba_128',
data_dir=...)``; TFDS 4.9 has no ``as_dataset``/``tfds.load`` for ArrayRecord files:
``sdgan_jax.input_pipeline`` builds the tf.data stream on the data source). Configs:
``<source>_<resolution>``, e.g. 'celeba_128' (the paper) and 'samples_128' (the embedded
sample faces).

The examples come from a folder that ``prepare.prepare_source`` filled (the prepared
chunks and ``split.json``): pass it as ``prepared_dir=`` (``build_dataset`` does), or as
TFDS's manual dir. The identity split is saved with the dataset twice: in the dataset
metadata (``builder.info.metadata['split']``, see ``load_split``) and as ``split.json`` in
the dataset's directory.

``TfdsCelebASource`` reads TFDS's own ``celeb_a`` builder (version 2.1.0 of
tensorflow-datasets 4.9 has image, landmarks, attributes and the identity) as a
preparation source, where its Google Drive download works.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from sdgan_jax.datasets import celeba_files, face_records, features, image_sources, prepare, samples
from sdgan_jax.datasets import chunks as chunks_lib

NAME = 'sdgan_faces'
SOURCES = ('celeba', 'samples')


def tfds_features(resolution: int = features.DEFAULT_RESOLUTION):
  """The ``tfds.features.FeaturesDict`` of one prepared example."""
  r = resolution
  return tfds.features.FeaturesDict(
    {
      'image': tfds.features.Image(shape=(r, r, 3), encoding_format='png'),
      'mask': tfds.features.Image(shape=(r, r, 1), encoding_format='png'),
      'semantic': tfds.features.Image(shape=(r, r, 1), encoding_format='png'),
      'landmarks': tfds.features.Tensor(shape=(features.NUM_LANDMARKS, 2), dtype=np.float32),
      'identity': np.int64,
      'label': np.int64,
      'filename': tfds.features.Text(),
    }
  )


@dataclasses.dataclass(eq=False)
class SdganFacesConfig(tfds.core.BuilderConfig):
  """A prepared-faces config.

  Attributes:
    source: 'celeba' (official files or TFDS celeb_a) or 'samples' (embedded faces).
    resolution: crop size R.
  """

  source: str = 'celeba'
  resolution: int = features.DEFAULT_RESOLUTION


def make_config(source: str, resolution: int = features.DEFAULT_RESOLUTION) -> SdganFacesConfig:
  return SdganFacesConfig(
    name=f'{source}_{resolution}',
    source=source,
    resolution=resolution,
    description=f'{source} faces prepared at {resolution}x{resolution} px',
  )


def _config(source: str, resolution: int) -> str | SdganFacesConfig:
  # TFDS refuses a config object named like a predefined one: pass those by name.
  name = f'{source}_{resolution}'
  if any(c.name == name for c in SdganFaces.BUILDER_CONFIGS):
    return name
  return make_config(source, resolution)


class SdganFaces(tfds.core.GeneratorBasedBuilder):
  """Prepared face crops, masks, semantic maps and identities (paper §4.1 split)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [make_config(s, r) for s in SOURCES for r in (128, 64)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Prepare the faces first (python tools/prepare_data.py --output DATA_DIR ...), which '
    'writes DATA_DIR/prepared/<config name>/ and builds this dataset from it.'
  )

  def __init__(self, *, prepared_dir: str | os.PathLike | None = None, **kwargs):
    self._prepared_dir = prepared_dir
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=(
        'Faces prepared for SDGAN: eye-aligned crops with 68 landmarks, face '
        'masks and 11-class semantic maps; splits by identity.'
      ),
      features=tfds_features(self.builder_config.resolution),
      metadata=tfds.core.MetadataDict(),
      homepage=celeba_files.CELEBA_URL,
    )

  def _split_generators(self, dl_manager):
    prepared_dir = pathlib.Path(self._prepared_dir or dl_manager.manual_dir)
    manifest = chunks_lib.load_manifest(prepared_dir)
    resolution = manifest['options']['resolution']
    if resolution != self.builder_config.resolution:
      raise ValueError(
        f'{prepared_dir} holds {resolution}-px faces but config '
        f'{self.builder_config.name!r} wants {self.builder_config.resolution}'
      )
    split = celeba_files.IdentitySplit.load(prepared_dir / prepare.SPLIT_FILE)
    if not split.images_prepared:
      raise ValueError(f'the preparation in {prepared_dir} did not finish: rerun it to resume')
    skipped = json.loads((prepared_dir / prepare.SKIPPED_FILE).read_text())
    self.info.metadata.update(
      {
        'split': split.to_json(),
        'skipped_counts': skipped['counts'],
        'num_multi_face': len(skipped['multi_face']),
        'source': manifest['source'],
        'prepare_options': manifest['options'],
        'prepared_fingerprint': manifest['items_fingerprint'],
        # How the semantic maps were made travels with the dataset (sdgan_jax.semantic_source),
        # so a dataset copied away from its preparation folder still says so.
        'semantic_parser': manifest.get('semantic_parser', ''),
      }
    )
    split.save(pathlib.Path(self.data_dir) / prepare.SPLIT_FILE)
    return {name: self._generate_examples(prepared_dir, split, name) for name in ('train', 'test')}

  def _generate_examples(self, prepared_dir, split, name):
    for face in chunks_lib.iter_prepared(prepared_dir):
      identity = int(face['identity'])
      if split.split_of(identity) != name:
        continue
      yield (
        str(face['filename']),
        {
          'image': face['image'],
          'mask': face['mask'],
          'semantic': face['semantic'],
          'landmarks': face['landmarks'],
          'identity': identity,
          'label': split.label_of(identity),
          'filename': str(face['filename']),
        },
      )


def load_split(builder: tfds.core.DatasetBuilder) -> celeba_files.IdentitySplit:
  """The identity split saved with a built ``sdgan_faces`` dataset."""
  try:
    return celeba_files.IdentitySplit.from_json(builder.info.metadata['split'])
  except (KeyError, TypeError):
    raise ValueError(
      f'{builder.data_dir} has no identity split in its metadata: build it '
      'with sdgan_jax.datasets.builder.build_dataset'
    ) from None


def build_dataset(
  prepared_dir: str | os.PathLike, data_dir: str | os.PathLike, source: str = 'celeba'
) -> SdganFaces:
  """Writes the TFDS dataset (ArrayRecord) of a finished preparation into ``data_dir``.

  An existing dataset is reused if it was built from the same prepared items and settings,
  and rebuilt otherwise.
  """
  manifest = chunks_lib.load_manifest(prepared_dir)
  resolution = manifest['options']['resolution']
  builder = SdganFaces(
    data_dir=os.fspath(data_dir),
    config=_config(source, resolution),
    prepared_dir=prepared_dir,
    file_format='array_record',
  )
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if builder.is_prepared():
    same = (
      builder.info.metadata.get('prepared_fingerprint') == manifest['items_fingerprint']
      and builder.info.metadata.get('prepare_options') == manifest['options']
    )
    if same:
      return builder
    mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS  # overwrites the dataset
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      download_mode=mode, compute_stats=tfds.download.ComputeStatsMode.SKIP
    )
  )
  # A fresh builder reads back what was written (metadata included).
  return SdganFaces(data_dir=os.fspath(data_dir), config=_config(source, resolution))


class TfdsCelebASource(image_sources.Source):
  """TFDS's ``celeb_a`` as a preparation source: (tfds id, identity, JPEG bytes).

  ``celeb_a`` 2.1.0 has the identity but no file name; an example's TFDS id (file and
  record index, e.g. ``celeb_a-train.tfrecord-00003-of-00016__917``) stands in for it.
  Its download comes from Google Drive and often fails on quota: then use the official
  files (``--source celeba_files``).

  Args:
    data_dir: TFDS data dir (None: TFDS's default).
    download: run ``download_and_prepare`` if ``celeb_a`` is not built yet.
  """

  name = 'tfds:celeb_a'

  def __init__(self, data_dir: str | os.PathLike | None = None, download: bool = True):
    self.builder = tfds.builder(
      'celeb_a', data_dir=None if data_dir is None else os.fspath(data_dir)
    )
    if 'identity' not in self.builder.info.features:
      raise ValueError(
        f'celeb_a {self.builder.info.version} has no identity feature (added in 2.1.0): '
        'update tensorflow-datasets, or use --source celeba_files with the official '
        f'identity_CelebA.txt ({celeba_files.CELEBA_URL})'
      )
    if not self.builder.is_prepared():
      if not download:
        raise FileNotFoundError(f'celeb_a is not built in {self.builder.data_dir}')
      try:
        self.builder.download_and_prepare()
      except Exception as e:
        raise RuntimeError(
          f'TFDS could not download/build celeb_a ({type(e).__name__}: {e}). Its files '
          'come from Google Drive, which often refuses on quota. Download the official '
          f'CelebA files from {celeba_files.CELEBA_URL} and use --source celeba_files '
          '--celeba_dir DIR instead'
        ) from e
    self._index = None

  def _examples(self, with_images: bool):
    # celeb_a's splits, in a fixed order (the order of the preparation's chunks).
    for split in ('train', 'validation', 'test'):
      ds = self.builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={'image': tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(add_tfds_id=True),
      )
      keep = ('tfds_id', 'identity', 'image') if with_images else ('tfds_id', 'identity')
      ds = ds.map(
        lambda ex, keep=keep: {k: ex[k] for k in keep}, num_parallel_calls=tf.data.AUTOTUNE
      )
      for ex in ds.as_numpy_iterator():
        identity = ex['identity']
        if isinstance(identity, dict):
          identity = identity['Identity_No']
        yield ex['tfds_id'].decode(), int(identity), (ex['image'] if with_images else None)

  def index(self) -> dict[str, int]:
    if self._index is None:
      self._index = {name: ident for name, ident, _ in self._examples(False)}
    return dict(self._index)

  def payloads(self, filenames: Sequence[str]) -> Iterator[bytes]:
    wanted = iter(filenames)
    target = next(wanted, None)
    for name, _, image in self._examples(True):
      if target is None:
        return
      if name == target:
        yield bytes(image)
        target = next(wanted, None)
    if target is not None:
      raise KeyError(f'{target} not found in celeb_a, or asked for out of the index order')


def prepared_dir_for(
  data_dir: str | os.PathLike, source: str, resolution: int = features.DEFAULT_RESOLUTION
) -> pathlib.Path:
  """Where ``prepare_and_build`` keeps the prepared chunks: DATA_DIR/prepared/<config>/."""
  return pathlib.Path(data_dir) / 'prepared' / f'{source}_{resolution}'


def prepare_and_build(
  source: image_sources.Source,
  data_dir: str | os.PathLike,
  kind: str,
  options: face_records.FaceOptions = face_records.FaceOptions(),
  **kwargs,
) -> tuple[SdganFaces | None, prepare.PreparedData]:
  """Splits, prepares (resumable) and writes ``sdgan_faces/<kind>_<R>`` into ``data_dir``.

  Args:
    source: the images (``image_sources.celeba_folder_source``, ``TfdsCelebASource``, ...).
    data_dir: TFDS data dir; the prepared chunks go to ``prepared_dir_for(data_dir, ...)``.
    kind: the config's source name, 'celeba' or 'samples'.
    options: the face settings (resolution, detector).
    **kwargs: split parameters and ``prepare.prepare_items`` options (workers, ...).

  Returns:
    (the built builder, or None when the preparation stopped early; the preparation).
  """
  prepared = prepare.prepare_source(
    source, prepared_dir_for(data_dir, kind, options.resolution), options, **kwargs
  )
  if not prepared.report.complete:
    return None, prepared
  return build_dataset(prepared.prepared_dir, data_dir, source=kind), prepared


def build_samples(
  data_dir: str | os.PathLike,
  cache_dir: str | os.PathLike | None = None,
  resolution: int = features.DEFAULT_RESOLUTION,
  workers: int = 2,
  copies: int | None = None,
  progress: bool = True,
) -> tuple[SdganFaces, prepare.PreparedData]:
  """The embedded sample faces (``samples``) as ``sdgan_faces/samples_<R>`` in ``data_dir``.

  Fetches the photos (into ``cache_dir``, default DATA_DIR/cache), writes the CelebA-style
  folder DATA_DIR/sample_faces, prepares it with the sample split and builds the dataset;
  each step is reused when already done.
  """

  data_dir = pathlib.Path(data_dir)
  folder = samples.build_sample_folder(
    data_dir / 'sample_faces',
    cache_dir or data_dir / 'cache',
    copies=samples.DEFAULT_COPIES if copies is None else copies,
  )
  source = image_sources.celeba_folder_source(folder)
  source.name = 'samples'
  built, prepared = prepare_and_build(
    source,
    data_dir,
    'samples',
    face_records.FaceOptions(resolution=resolution),
    workers=workers,
    chunk_size=32,
    progress=progress,
    **samples.SAMPLE_SPLIT,
  )
  return built, prepared
