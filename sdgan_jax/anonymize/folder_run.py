"""``anonymize_paths``: a whole run over files and folders into an output folder: the files
planned and checked (``plan_jobs``), the folder locked against a second run, what a killed
run left removed, the ``Runner`` run, and the JSON report written (docs/anonymize.md).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

from sdgan_jax import media
from sdgan_jax.anonymize import report as run_report
from sdgan_jax.anonymize.anonymizer import FaceAnonymizer
from sdgan_jax.anonymize.jobs import InputError, Job, check_not_busy, plan_jobs, report_file
from sdgan_jax.anonymize.runner import Interrupted, ReportWriteError, Runner


def anonymize_paths(
  inputs: Sequence[str | os.PathLike],
  output_dir: str | os.PathLike,
  anonymizer: FaceAnonymizer,
  *,
  report_path: str | os.PathLike | None = None,
  visualize: bool = False,
  progress: bool = True,
  images_per_batch: int | None = None,
  frames_per_batch: int | None = None,
  overwrite: bool = False,
) -> dict:
  """Anonymizes files and folders into ``output_dir``; writes and returns the JSON report.

  Everything is checked before the work starts (``plan_jobs``): existing outputs are only
  replaced with ``overwrite``. The run holds a lock on ``output_dir`` (``media.FolderLock``)
  until it ends: a second run into it (or into a folder above or below it) is refused
  with an ``InputError``, and the outputs are checked again under the lock. Without
  ``overwrite`` no output (nor the report) replaces a file that appeared meanwhile: that
  file is reported as an error. This tool's temporary files a killed run left in the
  folders written to are removed first, under the lock (the report lists them). Batch
  sizes default to the anonymizer's ``Options``.

  Raises:
    InputError: see ``plan_jobs``; or another run writes into ``output_dir``.
    Interrupted: Ctrl-C; the report of the files finished was written.
    ReportWriteError: the work is done but the report could not be written.
  """
  plan = dict(visualize=visualize, overwrite=overwrite, report_path=report_path)
  jobs = plan_jobs(inputs, output_dir, **plan)  # refused before anything is made
  if not jobs:
    raise InputError(f'no files under {", ".join(map(str, inputs))}')
  out_root = pathlib.Path(output_dir).absolute().resolve()
  try:
    lock = media.FolderLock(out_root).acquire()
  except media.FolderBusyError as e:
    raise InputError(f'{e.strerror} (--output {output_dir})') from None
  try:
    check_not_busy(output_dir, jobs, held=[out_root])
    jobs = plan_jobs(inputs, output_dir, **plan)  # again, now that no other run can write
    return _run_locked(
      jobs,
      inputs,
      output_dir,
      anonymizer,
      report_path=report_path,
      visualize=visualize,
      progress=progress,
      overwrite=overwrite,
      images_per_batch=images_per_batch,
      frames_per_batch=frames_per_batch,
      out_root=out_root,
    )
  finally:
    lock.release()


def _stale_temporaries(
  jobs: Sequence[Job], report: pathlib.Path, out_root: pathlib.Path
) -> list[pathlib.Path]:
  """Removes this tool's temporary files a killed run left where this run writes: in the
  folders under the locked ``out_root``, and the report's own beside it elsewhere."""
  removed = []
  for folder in sorted({d.parent for job in jobs for d in job.outputs()} | {report.parent}):
    if folder.resolve() == out_root or out_root in folder.resolve().parents:
      removed += media.remove_stale_temporaries(folder)
  if not (report.parent.resolve() == out_root or out_root in report.parent.resolve().parents):
    try:
      media.check_not_locked(report.parent)  # another run's folder: its temporaries are its own
    except media.FolderBusyError:
      return removed
    for path in sorted(report.parent.glob(f'.{report.stem}.{media.TEMP_MARKER}*')):
      if media.TEMP_PATTERN.match(path.name) and path.is_file() and not path.is_symlink():
        path.unlink(missing_ok=True)
        removed.append(path)
  return removed


def _run_locked(
  jobs: Sequence[Job],
  inputs,
  output_dir,
  anonymizer: FaceAnonymizer,
  *,
  report_path,
  visualize: bool,
  progress: bool,
  overwrite: bool,
  images_per_batch: int | None,
  frames_per_batch: int | None,
  out_root: pathlib.Path,
) -> dict:
  """``anonymize_paths``' work, under its lock on ``out_root``."""
  path = report_file(output_dir, report_path)
  runner = Runner(
    anonymizer,
    output_dir,
    visualize=visualize,
    progress=progress,
    images_per_batch=images_per_batch,
    frames_per_batch=frames_per_batch,
    replace=overwrite,
  )
  removed = _stale_temporaries(jobs, path, out_root)
  report = runner.run(jobs)
  report['inputs'] = [str(p) for p in inputs]
  report['output_dir'] = str(output_dir)
  report['overwrite'] = overwrite
  if removed:
    report['removed_temporary_files'] = [str(p) for p in removed]
  report['report'] = str(path)
  try:
    run_report.write_report(report, path, replace=overwrite)
  except OSError as e:
    message = (
      f'could not write the report {path} ({e.strerror or e}); the outputs are '
      'written: free some space or give another --report'
    )
    if runner.interrupted is not None:
      raise Interrupted(report, message) from None
    raise ReportWriteError(message, report) from None
  if runner.interrupted is not None:
    raise Interrupted(report)
  return report
