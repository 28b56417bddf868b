"""What a run will write where, checked before any work starts (``plan_jobs``).

Inputs are files and folders (recursive; the tree is mirrored under the output folder).
Nothing is ever written over an input, over another output of the run or over an existing
file (unless asked to), nor into a folder that cannot be written.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterable

from sdgan_jax import media

REPORT_NAME = 'anonymize_report.json'


def report_file(
  output_dir: str | os.PathLike, report_path: str | os.PathLike | None = None
) -> pathlib.Path:
  """Where a run's JSON report goes: ``report_path`` if given, else ``output_dir/REPORT_NAME``."""
  return pathlib.Path(report_path) if report_path else pathlib.Path(output_dir) / REPORT_NAME


class InputError(ValueError):
  """Bad command-line inputs (overlapping input and output, nothing to do...)."""


@dataclasses.dataclass(frozen=True)
class Job:
  """One input file and where its output goes."""

  source: pathlib.Path
  dest: pathlib.Path
  kind: str | None  # 'image', 'video', None (skipped: ``reason``) or 'error' (``reason``)
  visualization: pathlib.Path | None = None  # NAME.detections.png (--visualize, photos)
  reason: str | None = None
  # How the report and 'seeded' targets name the input when ``source`` is a local copy of
  # it (a Beam run's gs:// or s3:// file); None: ``str(source)``.
  name: str | None = None

  def key(self) -> str:
    """The input's name in the report and in the 'seeded' targets' draw."""
    return self.name if self.name is not None else str(self.source)

  def outputs(self) -> list[pathlib.Path]:
    """The files this job writes."""
    if self.kind not in ('image', 'video'):
      return []
    return [self.dest] + ([self.visualization] if self.visualization is not None else [])


def _inside(path: pathlib.Path, folder: pathlib.Path) -> bool:
  return path == folder or folder in path.parents


def skipped_type(path: pathlib.Path) -> str:
  """Why a file of another type is skipped."""
  return (
    f'{path.suffix or "no extension"}: not an image or video type this tool handles '
    f'({", ".join(media.IMAGE_EXTENSIONS + media.VIDEO_EXTENSIONS)})'
  )


def _job(src: pathlib.Path, dest: pathlib.Path, kind: str, visualize: bool) -> Job:
  vis = dest.with_name(f'{dest.stem}.detections.png') if visualize and kind == 'image' else None
  return Job(src, dest, kind, visualization=vis)


def _file_job(src: pathlib.Path, dest: pathlib.Path, visualize: bool) -> Job:
  """The job of a file found in an input folder (hidden, dangling or other: said why)."""
  if src.name.startswith('.'):
    return Job(
      src,
      dest,
      None,
      reason='hidden file (its name starts with a dot): not '
      'processed; rename it or give it as an input to include it',
    )
  if src.is_symlink() and not src.exists():
    return Job(
      src,
      dest,
      'error',
      reason=f'dangling symbolic link to {os.readlink(src)} (its '
      'target does not exist): fix or remove it',
    )
  kind = media.media_kind(src)
  if kind is None:
    return Job(src, dest, None, reason=skipped_type(src))
  return _job(src, dest, kind, visualize)


def _walk(path: pathlib.Path, base: pathlib.Path, visualize: bool) -> list[Job]:
  """The jobs of an input folder: hidden entries and other types skipped (and said)."""
  jobs = []
  for dirpath, dirnames, filenames in os.walk(path):
    folder = pathlib.Path(dirpath)
    for d in sorted(dirnames):
      if d.startswith('.'):
        jobs.append(
          Job(
            folder / d,
            base / (folder / d).relative_to(path),
            None,
            reason='hidden folder (its name starts with a dot): not searched; '
            'rename it or give it as an input to include it',
          )
        )
      elif (folder / d).is_symlink():  # os.walk does not follow it: say so
        jobs.append(
          Job(
            folder / d,
            base / (folder / d).relative_to(path),
            None,
            reason=f'symbolic link to the folder {os.readlink(folder / d)}: not '
            'followed (it could lead outside the input or in a loop); give '
            'its target as an input to include it',
          )
        )
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    for name in sorted(filenames):
      src = folder / name
      jobs.append(_file_job(src, base / src.relative_to(path), visualize))
  return jobs


def _input_jobs(
  inputs: list, out_root: pathlib.Path, output_dir, visualize: bool
) -> tuple[list[Job], list[pathlib.Path]]:
  """(the jobs of every input, the input folders), refusing missing inputs and an output
  folder inside an input folder."""
  jobs, folders = [], []
  for raw in inputs:
    path = pathlib.Path(raw)
    if not path.exists():
      if path.is_symlink():
        raise InputError(
          f'input {raw} is a symbolic link to {os.readlink(path)}, which does '
          'not exist: fix the link or leave it out'
        )
      raise InputError(f'input {raw} does not exist')
    if path.is_dir():
      if _inside(out_root, path.resolve()):
        raise InputError(
          f'the output folder {output_dir} is inside the input folder {raw}: '
          'outputs would mix with (and on a re-run overwrite) the inputs; '
          'choose an --output outside it'
        )
      folders.append(path.resolve())
      base = out_root / path.resolve().name if len(inputs) > 1 else out_root
      jobs += _walk(path, base, visualize)
    else:
      # A file named on the command line is tried as an image whatever its suffix.
      jobs.append(_job(path, out_root / path.name, media.media_kind(path) or 'image', visualize))
  return jobs, folders


class _Inputs:
  """The readable inputs, found by resolved path or by (device, inode): hard links and other
  aliases of an input count as the input."""

  def __init__(self, jobs: list[Job]):
    readable = [job.source for job in jobs if job.kind in ('image', 'video')]
    self._paths = {s.resolve(): s for s in readable}
    self._inodes = {}
    for s in readable:
      st = os.stat(s)
      self._inodes[(st.st_dev, st.st_ino)] = s

  def at(self, path: pathlib.Path) -> pathlib.Path | None:
    """The input at ``path``, or None."""
    if path.resolve() in self._paths:
      return self._paths[path.resolve()]
    if path.exists():
      st = os.stat(path)
      return self._inodes.get((st.st_dev, st.st_ino))
    return None


def _check_outputs(
  jobs: list[Job], inputs: _Inputs
) -> tuple[dict[pathlib.Path, pathlib.Path], list[pathlib.Path]]:
  """(resolved output -> its source, the outputs that exist), refusing an output on an input
  or on another output."""
  written: dict[pathlib.Path, pathlib.Path] = {}
  existing = []
  for job in jobs:
    for dest in job.outputs():
      resolved = dest.resolve()
      if inputs.at(dest) is not None:
        raise InputError(
          f'{job.source} would be written over the input {resolved}: choose another --output'
        )
      if resolved in written:
        raise InputError(
          f'{job.source} and {written[resolved]} would both be written to '
          f'{resolved}: give them separately or rename one'
        )
      written[resolved] = job.source
      if dest.exists():
        existing.append(dest)
  return written, existing


def _check_report(
  report: pathlib.Path, inputs: _Inputs, written: dict, folders: list[pathlib.Path]
) -> None:
  """Refuses a report path on an input, on an output, inside an input folder or a folder."""
  resolved = report.resolve()
  if inputs.at(report) is not None:
    raise InputError(
      f'--report {report} is the input {inputs.at(report)}: the report would '
      'replace it; choose another --report path'
    )
  if resolved in written:
    raise InputError(
      f'--report {report} is where {written[resolved]} is written: choose another --report path'
    )
  for folder in folders:
    if _inside(resolved, folder):
      raise InputError(
        f'--report {report} is inside the input folder {folder}: it would '
        'mix with the inputs; choose a --report path outside it'
      )
  if report.is_dir():
    raise InputError(f'--report {report} is a folder: give a file path')


def _check_writable(folders: Iterable[pathlib.Path]) -> None:
  """Refuses folders (or, where missing, their nearest existing parent) not writable."""
  checked = set()
  for folder in folders:
    while not folder.exists() and folder != folder.parent:
      folder = folder.parent
    if folder in checked:
      continue
    checked.add(folder)
    try:
      media.check_writable(folder)
    except OSError as e:
      raise InputError(
        f'cannot write into {folder} ({e.strerror or e}): choose a writable '
        '--output (and --report), or fix its permissions'
      ) from None


def check_not_busy(
  output_dir: str | os.PathLike, jobs: Iterable[Job], held: Iterable[pathlib.Path] = ()
) -> None:
  """Refuses (``InputError``) an output folder another live run writes into: its
  ``media.FolderLock`` on the folder, on a folder above it (that run's outputs hold ours)
  or on a folder the jobs write into (ours hold that run's). ``held``: this run's locks."""
  out_root = pathlib.Path(output_dir).absolute().resolve()
  held = {pathlib.Path(h).resolve() for h in held}
  folders = {out_root, *out_root.parents}
  folders |= {d.parent.resolve() for job in jobs for d in job.outputs() if d.parent.exists()}
  for folder in sorted(folders - held):
    try:
      media.check_not_locked(folder)
    except media.FolderBusyError as e:
      raise InputError(f'{e.strerror} (--output {output_dir})') from None


def plan_jobs(
  inputs: Iterable[str | os.PathLike],
  output_dir: str | os.PathLike,
  *,
  visualize: bool = False,
  overwrite: bool = False,
  report_path: str | os.PathLike | None = None,
) -> list[Job]:
  """Source -> destination of every file (folders recursive, mirrored under ``output_dir``),
  checked before any work starts.

  One folder input is mirrored into ``output_dir`` itself; with several inputs each folder
  gets a subfolder of its name. Hidden files and folders, symbolic links to folders, other
  file types and dangling symbolic links are left out (they get a report row: skipped, or
  an error for the dangling links).

  Raises:
    InputError: an input is missing; the output folder is (inside) an input folder or is a
      file; an output (photo, video, ``NAME.detections.png`` with ``visualize``, or the
      report at ``report_path``, default ``output_dir/REPORT_NAME``) would land on an input,
      on another output, or on an existing file (unless ``overwrite``); the report would be
      an input or inside an input folder; a folder to write into is not writable.
  """
  inputs = list(inputs)
  out_root = pathlib.Path(output_dir).absolute()
  if out_root.exists() and not out_root.is_dir():
    raise InputError(
      f'--output {output_dir} is an existing file, not a folder: give a folder '
      '(it is made if missing)'
    )
  out_root = out_root.resolve()
  jobs, folders = _input_jobs(inputs, out_root, output_dir, visualize)
  readable = _Inputs(jobs)
  written, existing = _check_outputs(jobs, readable)
  report = report_file(out_root, report_path)
  _check_report(report, readable, written, folders)
  if report.exists():
    existing.append(report)
  if existing and not overwrite:
    more = f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''
    raise InputError(
      f'{existing[0]}{more} already exists: pass --overwrite (overwrite=True) '
      'to replace existing outputs, or choose another --output'
    )
  _check_writable({out_root, report.resolve().parent, *(d.parent for d in written)})
  return jobs
