"""``Runner``: anonymizing planned files into a folder: photos in shared batches,
animations and videos frame batch by frame batch, progress, and the run's report rows and
totals (``folder_run.anonymize_paths`` plans the files, locks the folder and writes the
report; docs/anonymize.md).

An unreadable file, a dangling symbolic link or a video shorter than it declares is reported
and the run goes on; a photo whose processing raises is reported (not written) and the rest
of its batch is redone one photo at a time. Ctrl-C stops the run (``Interrupted``) after
writing the report of the files finished.
"""

from __future__ import annotations

import os
import pathlib
import time
import traceback
from collections.abc import Sequence

import numpy as np

from sdgan_jax import media
from sdgan_jax.anonymize import report as run_report
from sdgan_jax.anonymize.anonymizer import FaceAnonymizer
from sdgan_jax.anonymize.jobs import (
  Job,
  skipped_type,
)
from sdgan_jax.anonymize.report import file_entry, track_counts
from sdgan_jax.anonymize.tracking import FaceTracker, TrackCoverage
from sdgan_jax.faces.pipeline import Face


class ReportWriteError(OSError):
  """The run's work is done but its report could not be written (``.report`` holds it)."""

  def __init__(self, message: str, report: dict):
    super().__init__(message)
    self.report = report


class Interrupted(KeyboardInterrupt):
  """Ctrl-C during a run: the report of the files finished so far (``.report``) was
  written (``.report_error`` says why not, if it could not be)."""

  def __init__(self, report: dict, report_error: str | None = None):
    super().__init__('interrupted')
    self.report = report
    self.report_error = report_error


def _error(e: Exception) -> str:
  return f'{type(e).__name__}: {e}'


class Runner:
  """Anonymizes files into a folder and keeps the run's report (module doc)."""

  def __init__(
    self,
    anonymizer: FaceAnonymizer,
    output_dir: str | os.PathLike,
    *,
    visualize: bool = False,
    images_per_batch: int | None = None,
    frames_per_batch: int | None = None,
    progress: bool = True,
    replace: bool = True,
  ):
    self.anonymizer = anonymizer
    # False: a destination that exists when a file is written (written by someone else
    # since the run was planned) is left alone and the file reported as an error.
    self.replace = replace
    self.output_dir = pathlib.Path(output_dir)
    self.visualize = visualize
    options = anonymizer.options
    self.images_per_batch = (
      options.images_per_batch if images_per_batch is None else (images_per_batch)
    )
    self.frames_per_batch = (
      options.frames_per_batch if frames_per_batch is None else (frames_per_batch)
    )
    for name in ('images_per_batch', 'frames_per_batch'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
    self.progress = progress
    self.files: list[dict] = []
    self.warnings: list[str] = []
    self.interrupted: list[str] | None = None  # the inputs not finished, after a Ctrl-C
    self._bar = None
    self._faces = 0
    self._start = time.perf_counter()

  # progress: files done, with faces/s
  def _tick(self, faces: int, files: int = 0):
    self._faces += faces
    if self._bar is not None:
      rate = self._faces / max(time.perf_counter() - self._start, 1e-9)
      self._bar.set_postfix_str(f'{self._faces} faces, {rate:.2f} faces/s')
      if files:
        self._bar.update(files)

  def _add(self, entry: dict, faces: int = 0) -> None:
    """One finished file's entry, with the candidates the face mesh rejected in it."""
    rejected = self.anonymizer.take_rejected(entry['input'])
    entry['rejected_candidates'] = len(rejected)
    if rejected and entry.get('kind') == 'image' and 'frames' not in entry:
      entry['rejected'] = rejected
    self.files.append(entry)
    self._tick(faces, 1)

  def run(self, jobs: Sequence[Job]) -> dict:
    """Runs ``jobs``; a Ctrl-C stops it (``interrupted`` lists what was not finished) and
    the report of the files finished is returned."""
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    self._start = time.perf_counter()
    with tqdm(total=len(jobs), unit='file', disable=not self.progress, desc='anonymizing') as bar:
      self._bar = bar
      try:
        self._run_jobs(jobs)
      except KeyboardInterrupt:
        done = {f['input'] for f in self.files}
        self.interrupted = [j.key() for j in jobs if j.key() not in done]
      finally:
        self._bar = None
    return self.report()

  def process_jobs(self, jobs: Sequence[Job]) -> list[dict]:
    """Runs ``jobs`` as ``run`` does (photos in shared batches, each file's failure its
    own) and returns their report entries, taken out of ``files`` (a Beam worker's batch,
    ``beam_pipeline``)."""
    first = len(self.files)
    try:
      self._run_jobs(jobs)
    finally:
      entries = self.files[first:]
      del self.files[first:]
    return entries

  def _run_jobs(self, jobs: Sequence[Job]) -> None:
    batch = []
    for job in jobs:
      if job.kind is None:
        self._add(
          {'input': job.key(), 'status': 'skipped', 'error': job.reason or skipped_type(job.source)}
        )
      elif job.kind == 'error':
        self._add({'input': job.key(), 'status': 'error', 'error': job.reason})
      elif job.kind == 'video':
        self._video(job)
      else:
        batch.append(job)
        if len(batch) == self.images_per_batch:
          self._images(batch)
          batch = []
    if batch:
      self._images(batch)

  def report(self) -> dict:
    """The report of the files finished so far."""
    return run_report.run_report(
      self.files,
      anonymizer=self.anonymizer,
      warnings=self.warnings,
      seconds=time.perf_counter() - self._start,
      interrupted=self.interrupted,
    )

  # -- photos

  def _images(self, jobs: Sequence[Job]) -> None:
    start = time.perf_counter()
    loaded = []
    for job in jobs:
      try:
        loaded.append((job, media.read_image(job.source), time.perf_counter()))
      except media.UnreadableMediaError as e:
        self._add(file_entry(job, 'image', error=str(e), seconds=time.perf_counter() - start))
    single = [item for item in loaded if item[1].frames is None]
    if single:
      self._anonymize_loaded(single, start)
    for job, image, _ in loaded:
      if image.frames is not None:
        self._animation(job, image)

  def _anonymize_loaded(self, loaded: list, start: float) -> None:
    """Anonymizes and writes ``loaded`` [(job, LoadedImage, time read)] together; if that
    fails, each on its own, so that one bad photo does not cost the others their outputs."""
    read_done = time.perf_counter()
    try:
      results = self.anonymizer.process(
        [im.rgb for _, im, _ in loaded], keys=[job.key() for job, _, _ in loaded]
      )
    except Exception as e:  # pylint: disable=broad-except
      if len(loaded) > 1:
        for item in loaded:
          self._anonymize_loaded([item], time.perf_counter())
        return
      # Nothing is written for this image: an unprocessed photo must not leave.
      for job, _, _ in loaded:
        self._add(file_entry(job, 'image', error=_error(e), trace=traceback.format_exc(limit=4)))
      return
    share = (time.perf_counter() - read_done) / len(loaded)
    for (job, image, t_read), (out, faces) in zip(loaded, results):
      entry = file_entry(job, 'image', faces=faces)
      self._write_image(entry, job, image, out, [(out, faces)])
      entry['seconds'] = round(max(t_read - start, 0.0) + share, 3)
      self._add(entry, len(faces))

  def _write_image(
    self, entry: dict, job: Job, image: media.LoadedImage, out, frames: list
  ) -> None:
    """Writes one photo (``out``: its pixels, or a list of frames) and its visualization."""
    if image.notes:
      entry['notes'] = list(image.notes)
    try:
      media.write_image(
        job.dest,
        image,
        out,
        keep_exif=self.anonymizer.options.keep_exif,
        quality=self.anonymizer.options.quality,
        replace=self.replace,
      )
      entry['output'] = str(job.dest)
      if image.transposed:
        entry['exif_orientation_applied'] = True
      if self.visualize and job.visualization is not None:
        vis, faces = frames[0]  # the first frame of an animation
        media.write_image(
          job.visualization,
          media.LoadedImage(rgb=vis),
          run_report.draw_detections(vis, faces),
          replace=self.replace,
        )
        entry['visualization'] = str(job.visualization)
    except media.DestinationExistsError as e:
      entry['error'] = f'not written: {e.filename} {e.strerror}'
      entry['status'] = 'error'
    except Exception as e:  # pylint: disable=broad-except
      entry['error'] = f'writing failed: {_error(e)}'
      entry['status'] = 'error'

  # -- frames: animations, multi-page files and videos

  def _new_video(self) -> tuple[FaceTracker, TrackCoverage]:
    options = self.anonymizer.options
    return self.anonymizer.new_video(), TrackCoverage(options.track_cover_frames, options)

  def _process_frames(
    self,
    frames: list[np.ndarray],
    job: Job,
    tracker: FaceTracker,
    coverage: TrackCoverage,
    final: bool = False,
  ):
    """Anonymizes ``frames``; returns the frames ``coverage`` releases (all when ``final``)."""
    if frames:
      coverage.add_results(
        self.anonymizer.process(
          frames, keys=[job.key()] * len(frames), trackers=[tracker] * len(frames)
        )
      )
    return coverage.ready(final)

  def _animation(self, job: Job, image: media.LoadedImage) -> None:
    """Every frame of an animation or multi-page file, through the video path (tracks,
    shared batches, ``TrackCoverage``), written back as one file with its timing."""
    start = time.perf_counter()
    tracker, coverage = self._new_video()
    done = []
    try:
      rgbs = [frame.rgb for frame in image.frames]
      for lo in range(0, len(rgbs), self.frames_per_batch):
        done += self._process_frames(rgbs[lo : lo + self.frames_per_batch], job, tracker, coverage)
      done += coverage.ready(final=True)
    except Exception as e:  # pylint: disable=broad-except
      self._add(
        file_entry(
          job,
          'image',
          error=_error(e),
          trace=traceback.format_exc(limit=4),
          frames=len(image.frames),
          seconds=time.perf_counter() - start,
        )
      )
      return
    faces = [f for _, frame_faces in done for f in frame_faces]
    entry = file_entry(job, 'image', faces=faces)
    entry['faces'] = [
      dict(f.to_json(), frame=k) for k, (_, frame_faces) in enumerate(done) for f in frame_faces
    ]
    entry['frames'] = len(done)
    entry.update(track_counts(faces, coverage.covered))
    self._write_image(entry, job, image, [out for out, _ in done], done)
    entry['seconds'] = round(time.perf_counter() - start, 3)
    self._add(entry, len(faces))

  def _video(self, job: Job) -> None:
    """A video, frame batch by frame batch, into its output (audio kept where it can be)."""
    start = time.perf_counter()
    entry = file_entry(job, 'video', faces=[])
    entry['frames'] = 0
    try:
      info, frames = media.read_video(job.source)
    except media.UnreadableMediaError as e:
      entry.update(status='error', error=str(e))
    else:
      self._encode_video(job, info, frames, entry)
    entry['seconds'] = round(time.perf_counter() - start, 3)
    self._add(entry)

  def _encode_video(self, job: Job, info: media.VideoInfo, frames, entry: dict) -> None:
    tracker, coverage = self._new_video()
    faces: list[Face] = []
    writer = None
    ok = False
    read = 0
    try:
      try:
        writer = media.VideoWriter(
          job.dest, info, audio_from=job.source if info.has_audio else None, replace=self.replace
        )
      except Exception:  # pylint: disable=broad-except
        writer = media.VideoWriter(job.dest, info, replace=self.replace)
        entry['audio'] = 'dropped (the container would not take it)'
      read = self._stream_frames(job, info, frames, tracker, coverage, writer, faces)
      ok = True
    except Exception as e:  # pylint: disable=broad-except
      entry.update(status='error', error=_error(e), trace=traceback.format_exc(limit=4))
    finally:
      if writer is not None:
        try:
          writer.close(ok=ok)
        except media.DestinationExistsError as e:
          ok = False
          entry.update(status='error', error=f'not written: {e.filename} {e.strerror}')
        except Exception as e:  # pylint: disable=broad-except
          ok = False
          entry.update(status='error', error=f'encoding failed: {_error(e)}')
    entry.update(run_report.face_counts(faces))
    entry['frames'] = writer.frames_written if writer is not None else 0
    entry.update(track_counts(faces, coverage.covered))
    if ok:
      _video_written(entry, job, info, read)

  def _stream_frames(
    self,
    job: Job,
    info: media.VideoInfo,
    frames,
    tracker: FaceTracker,
    coverage: TrackCoverage,
    writer,
    faces: list[Face],
  ) -> int:
    """Anonymizes and writes the decoded ``frames``, adding their faces to ``faces``;
    returns how many frames were decoded."""
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    def write(chunk, final=False):
      released = []  # a chunk's faces count once all its frames are written
      for out, frame_faces in self._process_frames(chunk, job, tracker, coverage, final):
        writer.write(out)
        released += frame_faces
      self._tick(len(released))
      faces.extend(released)
      bar.update(len(chunk))

    read = 0
    total = info.nframes if np.isfinite(info.nframes) else None
    with tqdm(
      total=total, unit='frame', leave=False, disable=not self.progress, desc=job.source.name
    ) as bar:
      chunk = []
      for frame in frames:
        chunk.append(frame)
        read += 1
        if len(chunk) == self.frames_per_batch:
          write(chunk)
          chunk = []
      write(chunk, final=True)
    return read


def _video_written(entry: dict, job: Job, info: media.VideoInfo, read: int) -> None:
  """A written video's output, audio and frame counts; an error if frames are missing."""
  entry['output'] = str(job.dest)
  if info.note:
    entry['notes'] = [info.note]
  if info.has_audio:
    entry.setdefault('audio', 'kept')
  if np.isfinite(info.nframes):
    entry['frames_declared'] = int(info.nframes)
    # The declared count is the container's duration times the frame rate: allow for
    # rounding and a slightly longer audio stream.
    if info.nframes - read > max(1.0, 0.25 * info.fps, 0.02 * info.nframes):
      entry.update(
        status='error',
        error=(
          f'only {read} of the {int(info.nframes)} frames the file declares could be '
          'decoded (truncated or damaged?): the output holds those '
          f'{read}; repair or re-export the video and run it again'
        ),
      )
