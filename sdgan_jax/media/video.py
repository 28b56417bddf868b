"""Reading and writing the anonymizer's videos (imageio-ffmpeg, which ships its own ffmpeg
binary; ``sdgan_jax.media``).

Frames are decoded as rgb24 (``read_video``) and encoded with H.264 (VP9 for .webm) at the
input's size and frame rate (``VideoWriter``); the audio stream of the input is muxed in when
the container takes it, and container metadata is dropped (``-map_metadata -1``). ffmpeg is
started without a ``preexec_fn`` (``_plain_popen``): that would run Python's fork hooks in a
process where JAX's threads run, and JAX warns about it. Writes are atomic
(``files.atomic_path``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
from collections.abc import Iterator

import numpy as np

from sdgan_jax.media.files import UnreadableMediaError, atomic_path


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """What the anonymizer needs to re-encode a video like its input.

  Attributes:
    size: (width, height) of the decoded frames.
    fps: frames per second (25 when the file does not say).
    has_audio: the input has an audio stream.
    nframes: the frame count the container declares (its duration times the frame rate;
      may be a little off, e.g. with a longer audio stream), or inf when unknown.
  """

  size: tuple[int, int]
  fps: float
  has_audio: bool
  nframes: float
  note: str | None = None  # how a variable frame rate was kept, for the report


# A variable-frame-rate video is decoded at a constant rate with two slots between its
# closest frames (at one, ffmpeg's rounding can drop one of them), so that each frame keeps
# its time; a rate above MAX_VFR_FPS (frames closer than 2/MAX_VFR_FPS s) is refused.
MAX_VFR_FPS = 240.0
# Frame intervals that differ by more than this fraction of their median: a variable rate.
VFR_TOLERANCE = 0.1


def _frame_times(path: pathlib.Path) -> np.ndarray | None:
  """The presentation times (s) of the first video stream's packets, sorted, read from the
  container without decoding; None when ffmpeg cannot list them."""
  import subprocess  # pylint: disable=import-outside-toplevel

  import imageio_ffmpeg  # pylint: disable=import-outside-toplevel

  try:
    listed = subprocess.run(
      [
        imageio_ffmpeg.get_ffmpeg_exe(),
        '-nostdin',
        '-loglevel',
        'error',
        '-i',
        str(path),
        '-map',
        '0:v:0',
        '-c',
        'copy',
        '-f',
        'framecrc',
        '-',
      ],
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
    )
  except (OSError, subprocess.SubprocessError):
    return None
  base, times = None, []
  for line in listed.stdout.splitlines():
    if line.startswith('#tb 0:'):
      num, _, den = line.split(':', 1)[1].strip().partition('/')
      base = float(num) / float(den or 1)
    elif line and not line.startswith('#'):
      fields = [f.strip() for f in line.split(',')]
      if len(fields) >= 3 and fields[0] == '0':
        times.append(int(fields[2]))
  if base is None or listed.returncode != 0 or not times:
    return None
  return np.sort(np.asarray(times, np.float64) * base)


def _constant_rate(path: pathlib.Path, fps: float) -> tuple[float | None, str | None]:
  """(the constant rate to decode a variable-frame-rate video at, the report's note), or
  (None, None) for a constant rate; raises UnreadableMediaError when frames are closer
  than 1/MAX_VFR_FPS s."""
  times = _frame_times(path)
  if times is None or len(times) < 3:
    return None, None
  gaps = np.diff(times)
  gaps = gaps[gaps > 0]
  if not len(gaps) or gaps.max() - gaps.min() <= VFR_TOLERANCE * np.median(gaps):
    return None, None
  closest = float(gaps.min())
  if 2.0 / closest > MAX_VFR_FPS:
    raise UnreadableMediaError(
      f'{path}: variable frame rate with frames {closest * 1000:.1f} ms apart: its frames '
      f'cannot keep their times at up to {MAX_VFR_FPS:g} fps; re-encode it at a constant '
      'rate first, e.g. ffmpeg -i IN -fps_mode cfr -r 30 OUT'
    )
  rate = float(np.ceil(max(fps, 2.0 / closest) * 100) / 100)
  return rate, (
    f'variable frame rate (frames {closest * 1000:.0f}-{gaps.max() * 1000:.0f} ms '
    f'apart): written at a constant {rate:g} fps, each frame shown from its own '
    'time (within a quarter of the closest gap) and repeated until the next, so '
    'the timing and the audio stay in step'
  )


@contextlib.contextmanager
def _plain_popen() -> Iterator[None]:
  """imageio-ffmpeg starts ffmpeg with ``preexec_fn=os.setpgrp`` (to keep Ctrl-C from it):
  a ``preexec_fn`` makes ``subprocess`` run Python's fork hooks, and JAX's hook warns
  "os.fork() was called ... JAX is multithreaded". Without it, ffmpeg is spawned with no
  Python code run in the child, so nothing can deadlock; a Ctrl-C then stops ffmpeg too,
  which is what the anonymizer does anyway (a partial output is discarded)."""
  key = 'IMAGEIO_FFMPEG_NO_PREVENT_SIGINT'
  before = os.environ.get(key)
  os.environ[key] = '1'
  try:
    yield
  finally:
    if before is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = before


def read_video(path: str | os.PathLike) -> tuple[VideoInfo, Iterator[np.ndarray]]:
  """Opens a video: (info, iterator of uint8 [H, W, 3] frames); raises UnreadableMediaError.

  ffmpeg applies the container's rotation while decoding, so frames come upright. A
  variable frame rate is decoded at a constant one fine enough for every frame to keep its
  time (``_constant_rate``; ``VideoInfo.note`` says so).
  """
  import imageio_ffmpeg  # pylint: disable=import-outside-toplevel

  path = pathlib.Path(path)
  if not path.is_file() or path.stat().st_size == 0:
    raise UnreadableMediaError(f'{path}: empty or missing video file')
  probe = imageio_ffmpeg.read_frames(str(path))
  try:
    with _plain_popen():
      meta = next(probe)
  except (RuntimeError, OSError, StopIteration, IndexError, ValueError) as e:
    probe.close()
    raise UnreadableMediaError(
      f'{path}: cannot read the video ({type(e).__name__}: '
      f'{str(e).strip().splitlines()[-1] if str(e).strip() else e})'
    ) from e
  # ffmpeg would decode a variable rate at the stream's nominal rate, which can differ from
  # the rate ``meta`` reports (6 frames over 1.86 s became 53 frames over 11.3 s): decode
  # it at a constant rate chosen here, and write at that rate.
  try:
    rate, note = _constant_rate(path, float(meta.get('fps') or 25.0))
  except UnreadableMediaError:
    probe.close()
    raise
  if rate is None:
    reader = probe
  else:
    probe.close()
    reader = imageio_ffmpeg.read_frames(
      str(path), output_params=['-fps_mode', 'cfr', '-r', f'{rate:g}']
    )
  try:
    with _plain_popen():
      meta = next(reader) if rate is not None else meta
  except (RuntimeError, OSError, StopIteration, IndexError, ValueError) as e:
    reader.close()
    raise UnreadableMediaError(
      f'{path}: cannot read the video ({type(e).__name__}: '
      f'{str(e).strip().splitlines()[-1] if str(e).strip() else e})'
    ) from e
  width, height = (int(v) for v in meta['size'])
  fps = rate or float(meta.get('fps') or 25.0)
  duration = meta.get('duration')
  declared = (
    float(round(float(duration) * fps)) if duration and duration != 'N/A' else (float('inf'))
  )
  info = VideoInfo(
    size=(width, height),
    fps=fps,
    has_audio=bool(meta.get('audio_codec')),
    nframes=float(meta.get('nframes', declared)) if rate is None else declared,
    note=note,
  )

  def frames():
    try:
      for raw in reader:
        yield np.frombuffer(raw, np.uint8).reshape(height, width, 3)
    finally:
      reader.close()

  return info, frames()


class VideoWriter:
  """Encodes frames to ``dest`` atomically (a temporary file, renamed on ``close``).

  H.264 (VP9 for .webm), yuv420p when the size allows it (even width and height; 4:4:4
  otherwise, so no frame is resized), the input's frame rate, the audio of ``audio_from``
  when given, and no container metadata. An existing ``dest`` is replaced only with
  ``replace`` (``atomic_path``).
  """

  def __init__(
    self,
    dest: str | os.PathLike,
    info: VideoInfo,
    *,
    audio_from: str | os.PathLike | None = None,
    quality: float = 8.0,
    replace: bool = True,
  ):
    import imageio_ffmpeg  # pylint: disable=import-outside-toplevel

    self.dest = pathlib.Path(dest)
    self._context = atomic_path(self.dest, replace=replace)
    self._tmp = self._context.__enter__()
    width, height = info.size
    even = width % 2 == 0 and height % 2 == 0
    codec = 'libvpx-vp9' if self.dest.suffix.lower() == '.webm' else 'libx264'
    self.frames_written = 0
    try:
      self._writer = imageio_ffmpeg.write_frames(
        str(self._tmp),
        (width, height),
        fps=info.fps,
        codec=codec,
        quality=quality,
        pix_fmt_out='yuv420p' if even else 'yuv444p',
        macro_block_size=1,
        output_params=['-map_metadata', '-1'],
        audio_path=str(audio_from) if audio_from is not None else None,
      )
      with _plain_popen():
        self._writer.send(None)  # starts ffmpeg
    except BaseException as e:
      self._context.__exit__(type(e), e, e.__traceback__)  # no temporary file left behind
      raise
    self._size = (height, width)

  def write(self, frame: np.ndarray) -> None:
    frame = np.ascontiguousarray(frame, np.uint8)
    if frame.shape != self._size + (3,):
      raise ValueError(f'frame {frame.shape} does not match the video size {self._size}')
    self._writer.send(frame)
    self.frames_written += 1

  def close(self, ok: bool = True) -> None:
    """Finishes the file; with ``ok=False`` (an error) the partial file is discarded."""
    try:
      self._writer.close()
    except BaseException:  # a Ctrl-C while ffmpeg finishes, too: the file may be cut short
      ok = False
      raise
    finally:
      if ok:
        self._context.__exit__(None, None, None)
      else:
        self._context.__exit__(RuntimeError, RuntimeError('discarded'), None)
