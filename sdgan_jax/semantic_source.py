"""Which semantic maps a SDGAN model was trained on, and the same maps at inference (§3.2).

The generator is conditioned on a semantic map (paper §3.2, Block I): the landmark
polygons of ``sdgan_jax.faces.masks`` or the argmax of a trained EAGRNet
(``parser_inference.TrainedParser``, ``prepare_data.py --parser``). A model must be given
the kind of map it was trained on, so training records it in the workdir:

  <workdir>/semantic_maps.json
    {"source": "polygons", "dataset": ..., "manifest": ...}
    {"source": "parser", "parser_fingerprint": "<abs workdir>@<step>:<weights hash>",
     "parser_workdir": ..., "parser_step": ..., "dataset": ..., "manifest": ...}

taken from the preparation manifest of the training dataset (``from_dataset``): a TFDS
dataset ``DATA_DIR/sdgan_faces/<config>/<version>`` was built from
``DATA_DIR/prepared/<config>/manifest.json``, whose ``semantic_parser`` names the parser;
the manifest counts only if its ``items_fingerprint`` is the ``prepared_fingerprint`` the
dataset's metadata holds, if any (a ``semantic_parser`` there is taken first). A dataset
without such a manifest, and a workdir without the record (older runs), count as
polygons.

At inference (``parser_for``; the anonymizer and ``tools/eval.py``) a model trained on
parser maps gets its parser's maps of the aligned crops (``parse_crops``, the one
implementation, which data preparation uses too); the face mask stays the landmark mask.
The parser is the one the record names, or one given (``--parser WORKDIR``) whose step and
weights hash are the recorded ones (the workdir may have moved). Every mismatch is a
``SemanticMapsError`` naming what is wrong and what to do.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
from typing import Any

import numpy as np

RECORD = 'semantic_maps.json'
POLYGONS = 'polygons'
PARSER = 'parser'
MANIFEST = 'manifest.json'  # sdgan_jax.datasets.chunks.MANIFEST
PREPARED = 'prepared'  # DATA_DIR/prepared/<config>/ (datasets.builder)


class SemanticMapsError(ValueError):
  """A model and the semantic maps (or face parser) offered to it do not match."""


@dataclasses.dataclass(frozen=True)
class SemanticSource:
  """How a model's semantic maps were made (the record of ``semantic_maps.json``).

  Attributes:
    source: 'polygons' (landmark polygons) or 'parser' (a trained EAGRNet).
    parser_fingerprint: ``TrainedParser.fingerprint`` of the parser (source 'parser').
    parser_workdir, parser_step: where that parser was, and its checkpoint step.
    dataset: the training dataset's directory; manifest: its preparation manifest (None
      when none was found).
  """

  source: str = POLYGONS
  parser_fingerprint: str | None = None
  parser_workdir: str | None = None
  parser_step: int | None = None
  dataset: str | None = None
  manifest: str | None = None

  def __post_init__(self):
    if self.source not in (POLYGONS, PARSER):
      raise ValueError(
        f"semantic map source must be '{POLYGONS}' or '{PARSER}', got {self.source!r}"
      )
    if self.source == PARSER and not self.parser_fingerprint:
      raise ValueError('a parser source needs the parser_fingerprint')

  @classmethod
  def from_parser_fingerprint(cls, fingerprint: str, **kwargs) -> SemanticSource:
    """The 'parser' source of a ``TrainedParser.fingerprint``."""
    workdir, step, _ = split_fingerprint(fingerprint)
    return cls(PARSER, str(fingerprint), workdir, step, **kwargs)

  @property
  def label(self) -> str:
    """'polygons', or the parser's fingerprint (what the anonymizer's report names)."""
    return POLYGONS if self.source == POLYGONS else str(self.parser_fingerprint)

  def to_json(self) -> dict[str, Any]:
    if self.source == POLYGONS:
      return {'source': POLYGONS, 'dataset': self.dataset, 'manifest': self.manifest}
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict) -> SemanticSource:
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in fields})


def split_fingerprint(fingerprint: str) -> tuple[str, int | None, str]:
  """(workdir, step, weights hash) of '<workdir>@<step>:<hash>' (``TrainedParser``)."""
  workdir, _, rest = str(fingerprint).rpartition('@')
  step, _, digest = rest.partition(':')
  try:
    return workdir, int(step), digest
  except ValueError:
    return workdir, None, digest


def same_weights(a: str, b: str) -> bool:
  """Whether two parser fingerprints name the same weights (step and hash; the workdir
  part is where they were, which may have moved)."""
  return split_fingerprint(a)[1:] == split_fingerprint(b)[1:]


# ---------------------------------------------------------------------------------------
# The dataset's maps and the workdir record.


def _read_json(path: pathlib.Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def from_dataset(dataset: str | os.PathLike) -> SemanticSource:
  """The semantic maps of a prepared TFDS dataset directory (module doc)."""
  path = pathlib.Path(dataset).resolve()
  metadata = _read_json(path / 'metadata.json') or {}
  if metadata.get('semantic_parser'):
    return SemanticSource.from_parser_fingerprint(metadata['semantic_parser'], dataset=str(path))
  manifest_path = None
  if len(path.parents) > 2:  # DATA_DIR/sdgan_faces/<config>/<version>
    manifest_path = path.parents[2] / PREPARED / path.parent.name / MANIFEST
  manifest = _read_json(manifest_path) if manifest_path is not None else None
  if manifest is None:
    logging.warning(
      'no preparation manifest for %s (looked for %s): its semantic maps are '
      'taken to be landmark polygons',
      path,
      manifest_path,
    )
    return SemanticSource(POLYGONS, dataset=str(path))
  built_from = metadata.get('prepared_fingerprint')
  if built_from and built_from != manifest.get('items_fingerprint'):
    logging.warning(
      '%s was prepared again since %s was built from it (fingerprint %s, not '
      '%s): its semantic maps are taken to be landmark polygons; rebuild the '
      'dataset (tools/prepare_data.py) to be sure',
      manifest_path,
      path,
      manifest.get('items_fingerprint'),
      built_from,
    )
    return SemanticSource(POLYGONS, dataset=str(path))
  if manifest.get('semantic_parser'):
    return SemanticSource.from_parser_fingerprint(
      manifest['semantic_parser'], dataset=str(path), manifest=str(manifest_path)
    )
  return SemanticSource(POLYGONS, dataset=str(path), manifest=str(manifest_path))


def read_record(workdir: str | os.PathLike) -> SemanticSource:
  """The record of a SDGAN workdir; polygons for workdirs without one (older runs)."""
  path = pathlib.Path(workdir) / RECORD
  if not path.is_file():
    return SemanticSource(POLYGONS)
  try:
    return SemanticSource.from_json(json.loads(path.read_text()))
  except (ValueError, TypeError) as e:
    raise SemanticMapsError(
      f'{path} is not a semantic map record ({e}): delete it if the '
      'model was trained on landmark polygons'
    ) from None


def write_record(workdir: str | os.PathLike, source: SemanticSource) -> pathlib.Path:
  """Writes ``<workdir>/semantic_maps.json`` atomically."""
  path = pathlib.Path(workdir) / RECORD
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(source.to_json(), indent=1) + '\n')
  os.replace(tmp, path)
  return path


def record_training_maps(workdir: str | os.PathLike, dataset: str | os.PathLike) -> SemanticSource:
  """At the start of SDGAN training: records the maps of ``dataset`` in ``workdir``.

  A resumed run whose record names other maps is warned about (its early steps saw those)
  and the record is replaced by the current dataset's.
  """
  source = from_dataset(dataset)
  if '://' in str(workdir):  # only local workdirs are read back (the anonymizer, eval)
    logging.warning('semantic maps %s not recorded in the remote workdir %s', source.label, workdir)
    return source
  old_path = pathlib.Path(workdir) / RECORD
  if old_path.is_file():
    old = read_record(workdir)
    if old.label != source.label:
      logging.warning(
        '%s trained on %s semantic maps before and now on %s ones (%s)',
        workdir,
        old.label,
        source.label,
        dataset,
      )
  write_record(workdir, source)
  logging.info('semantic maps: %s (recorded in %s)', source.label, old_path)
  return source


# ---------------------------------------------------------------------------------------
# The parser at inference.


def parse_crops(parser, crops: np.ndarray) -> np.ndarray:
  """The parser's class ids of aligned crops: uint8 [N, R, R, 3] -> uint8 [N, R, R, 1].

  ``parser``: uint8 crops [N, R, R, 3] -> class ids [N, R, R] (``TrainedParser``).
  """
  crops = np.asarray(crops)
  if not len(crops):
    return np.zeros((*crops.shape[:3], 1), np.uint8)
  labels = np.asarray(parser(crops))
  if labels.shape != crops.shape[:3]:
    raise ValueError(
      f'the parser returned maps of shape {labels.shape}, expected {crops.shape[:3]}'
    )
  return labels.astype(np.uint8)[..., None]


def parser_for(
  record: SemanticSource, parser=None, *, model: str = 'the model', batch_size: int = 32
):
  """The face parser a model needs: None for polygon maps, else a ``TrainedParser``.

  Args:
    record: the model's ``SemanticSource`` (``read_record``).
    parser: None (the parser the record names), a parser workdir, or a loaded parser
      (an object with a ``fingerprint``).
    model: how errors name the model (its workdir).
    batch_size: crops per parser call when loading one.

  Raises:
    SemanticMapsError: a parser given for a model trained on polygon maps; a parser
      model whose parser is not there and none given; a parser other than the recorded.
  """
  given = parser is not None and parser != ''
  if record.source == POLYGONS:
    if given:
      raise SemanticMapsError(
        f'{model} was trained on landmark-polygon semantic maps (no parser in its '
        f'{RECORD}), but a face parser was given ({getattr(parser, "fingerprint", parser)})'
        ': leave out --parser'
      )
    return None
  fingerprint = record.parser_fingerprint
  if not given:
    parser = record.parser_workdir
    if not parser or not (pathlib.Path(parser) / 'checkpoints').is_dir():
      raise SemanticMapsError(
        f'{model} was trained on the semantic maps of the face parser {fingerprint}, whose '
        f'workdir {parser or "(none recorded)"} does not exist here: pass --parser WORKDIR '
        '(parser_workdir=), the parser workdir with those weights'
      )
  if isinstance(parser, (str, os.PathLike)):
    parser = _load_parser(parser, record, model, batch_size)
  if not same_weights(parser.fingerprint, fingerprint):
    raise SemanticMapsError(
      f'the face parser {parser.fingerprint} is not the one {model} was trained with '
      f'({fingerprint}, recorded in its {RECORD}): its weights differ; pass --parser with '
      'the parser workdir of those weights'
    )
  return parser


def _load_parser(workdir: str | os.PathLike, record: SemanticSource, model: str, batch_size: int):
  from sdgan_jax import parser_inference  # pylint: disable=import-outside-toplevel

  config = _read_json(pathlib.Path(workdir) / 'config.json')
  if not isinstance(config, dict) or config.get('task') != 'parser':
    raise SemanticMapsError(
      f'--parser {workdir} is not a face parser workdir (its config.json is missing or not '
      "task='parser'): give the EAGRNet workdir trained with configs/eagrnet_*.py"
    )
  step = record.parser_step
  if step is not None and not (pathlib.Path(workdir) / 'checkpoints' / str(step)).is_dir():
    raise SemanticMapsError(
      f'the face parser workdir {workdir} has no checkpoint at step {step}, the one {model} '
      f'was trained with ({record.parser_fingerprint}): pass --parser with the parser '
      'workdir of those weights'
    )
  try:
    return parser_inference.TrainedParser.from_workdir(workdir, step, batch_size=batch_size)
  except (FileNotFoundError, ValueError) as e:
    raise SemanticMapsError(f'--parser {workdir}: {e}') from None
