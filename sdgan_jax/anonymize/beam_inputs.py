"""The Beam pipeline's inputs: which files each input names, where each one's output goes
under the output prefix (the CLI's layout), and the CLI's batches of them
(docs/scale.md).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterable, Sequence

from apache_beam.io.filesystems import FileSystems

from sdgan_jax import media
from sdgan_jax.anonymize import jobs as anonymize_jobs
from sdgan_jax.anonymize.beam_spec import exists, is_local, join

GLOB = frozenset('*?[')


@dataclasses.dataclass(frozen=True)
class Source:
  """One input file and its path (``/``-separated) under the output prefix."""

  url: str
  rel: str
  kind: str | None  # 'image', 'video', None (skipped) or 'error'
  reason: str | None = None  # why skipped or an error
  input: int = 0  # which input (in the command line's order) named it


def expand_inputs(inputs: Sequence[str]) -> list[tuple[str, str, str, int]]:
  """(pattern, its folder, the prefix of its outputs, its index) per input: a pattern's
  folder is the part before its first wildcard; a folder is every file under it; a file
  is itself."""
  out = []
  for index, raw in enumerate(inputs):
    raw = str(raw)
    if GLOB & set(raw):
      cut = min(raw.index(c) for c in GLOB if c in raw)
      base = raw[:cut].rsplit('/', 1)[0]
      pattern, is_file = raw, False
    elif os.path.isdir(raw) if is_local(raw) else not exists(raw):
      base = raw.rstrip('/') or '/'
      pattern, is_file = join(base, '**'), False
    else:
      base, pattern, is_file = os.path.dirname(raw), raw, True
    # The CLI's layout: one folder is mirrored into the output itself, several each into a
    # subfolder of its name; files named as inputs go to the top.
    prefix = '' if is_file or len(inputs) == 1 else base.rstrip('/').rsplit('/', 1)[-1]
    out.append((pattern, base, prefix, index))
  return out


def match_input(item: tuple[str, str, str, int], visualize: bool) -> Iterable[Source]:
  """The files of one input; hidden files and folders, other types: skipped rows."""
  pattern, base, prefix, index = item
  result = FileSystems.match([pattern])[0]
  if not result.metadata_list:
    yield Source(
      pattern,
      prefix or os.path.basename(pattern),
      'error',
      f'input {pattern} matches no file',
      index,
    )
  for meta in result.metadata_list:
    path = meta.path
    rel = (
      path[len(base) :].lstrip('/') if base and path.startswith(base) else (path.rsplit('/', 1)[-1])
    )
    if media.TEMP_PATTERN.match(rel.rsplit('/', 1)[-1]):
      continue  # a killed run's temporary file, not an input
    parts = rel.split('/')
    hidden = next((k for k, part in enumerate(parts[:-1]) if part.startswith('.')), None)
    if hidden is not None:  # one row for the folder, as the CLI's (``OneSourcePerOutput``)
      folder = '/'.join(parts[: hidden + 1])
      yield Source(
        path[: len(path) - len(rel)] + folder,
        '/'.join(filter(None, [prefix, folder])),
        None,
        'hidden folder (its name starts with a dot): not searched; rename it '
        'or give it as an input to include it',
        index,
      )
      continue
    rel = '/'.join(filter(None, [prefix, rel]))
    job = anonymize_jobs._file_job(pathlib.Path(path), pathlib.Path(rel), visualize)  # pylint: disable=protected-access
    yield Source(path, rel, job.kind, job.reason, index)


def one_per_output(item: tuple[str, Iterable[Source]]) -> Iterable[Source]:
  """The first (by name) of the inputs that would land on one output; the others: errors."""
  rel, sources = item
  sources = sorted(set(sources), key=lambda s: s.url)
  yield sources[0]
  for other in sources[1:]:
    yield dataclasses.replace(
      other,
      kind='error',
      reason=(
        f'{other.url} and {sources[0].url} would both be written to {rel}: give them '
        'separately or rename one'
      ),
    )


def cli_order(source: Source, index: int) -> tuple:
  """Where the CLI takes ``source`` up (``jobs.plan_jobs``): input by input; in a folder,
  its files by name before its subfolders (``os.walk`` top-down, sorted)."""
  *folders, name = source.rel.split('/')
  return (index, *((1, d) for d in folders), (0, name))


def cli_batches(sources: list[Source], images_per_batch: int) -> Iterable[list[Source]]:
  """The CLI's batches: photos in its order, ``images_per_batch`` consecutive ones
  together (``Runner``); a video (one track never crosses workers), a skipped file or an
  error alone. A photo's output can differ by a level in a few pixels with the photos it
  shares its generator batches with (XLA's rounding), so the batches are the CLI's: the
  same bytes as the CLI, for any runner and any number of workers."""
  ordered = sorted(sources, key=lambda s: cli_order(s, s.input))
  photos = [s for s in ordered if s.kind == 'image']
  for lo in range(0, len(photos), images_per_batch):
    yield photos[lo : lo + images_per_batch]
  for source in ordered:
    if source.kind != 'image':
      yield [source]
