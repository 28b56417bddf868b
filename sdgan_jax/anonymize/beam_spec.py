"""What every stage of the Beam pipeline shares: the run (``RunSpec``), where its state
lives under the output prefix, and file access through Beam's filesystems (local paths,
``gs://``, ``s3://``). docs/scale.md describes the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING

from apache_beam.io.filesystems import FileSystems

from sdgan_jax import media
from sdgan_jax.anonymize.options import Options

if TYPE_CHECKING:
  from sdgan_jax.anonymize.anonymizer import FaceAnonymizer

STATE_DIR = '.sdgan_beam'  # under the output prefix: run.json and rows/
COUNTERS = 'sdgan_anonymize'


def is_local(path: str) -> bool:
  return FileSystems.get_scheme(path) is None


def join(prefix: str, rel: str) -> str:
  return FileSystems.join(prefix, *rel.split('/')) if rel else prefix


def exists(path: str) -> bool:
  return FileSystems.exists(path)


def read_json(path: str):
  with FileSystems.open(path, compression_type='uncompressed') as f:
    return json.loads(f.read().decode('utf-8'))


def write_atomic(path: str, data: bytes) -> None:
  """Writes ``data`` to ``path`` whole or not at all: locally a temporary name then a
  rename (``media.atomic_path``); an object store shows an object once it is complete."""
  if is_local(path):
    with media.atomic_path(path) as tmp:
      tmp.write_bytes(data)
  else:
    with FileSystems.create(path, compression_type='uncompressed') as f:
      f.write(data)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """What a worker needs to know of the run (pickled into the ``DoFn``s)."""

  output: str
  report: str  # the summary's path; the row shards go beside it
  options: Options
  checkpoint: str | None = None
  step: int | None = None
  baseline: str | None = None
  weights_dir: str | None = None
  visualize: bool = False
  overwrite: bool = False
  resume: bool = False  # the output prefix holds this run (``run.json`` matches)
  compilation_cache: str | None = None

  def fingerprint(self) -> str:
    """What an output depends on: a finished file is reused only under the same one."""
    fields = {
      'options': dataclasses.asdict(self.options),
      'checkpoint': self.checkpoint,
      'step': self.step,
      'baseline': self.baseline,
      'visualize': self.visualize,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]

  @property
  def method(self) -> str:
    return f'baseline:{self.baseline}' if self.baseline else 'sdgan'

  def dest(self, rel: str) -> str:
    return join(self.output, rel)

  def record(self, rel: str) -> str:
    """The finished file's record (its report row), named by its output path."""
    digest = hashlib.sha256(rel.encode('utf-8', 'surrogateescape')).hexdigest()[:24]
    return join(self.output, f'{STATE_DIR}/rows/{digest[:2]}/{digest}.json')

  @property
  def run_record(self) -> str:
    return join(self.output, f'{STATE_DIR}/run.json')

  @property
  def rows_prefix(self) -> str:
    return self.report[: -len('.json')] if self.report.endswith('.json') else self.report

  def load(self) -> FaceAnonymizer:
    from sdgan_jax.anonymize.loading import build_anonymizer  # pylint: disable=import-outside-toplevel

    return build_anonymizer(
      self.checkpoint,
      baseline=self.baseline,
      options=self.options,
      weights_dir=self.weights_dir,
      step=self.step,
    )
