"""Which files the anonymizer handles, and writing them safely (``sdgan_jax.media``).

Every write goes to a temporary file in the destination folder and is renamed over the
destination (``atomic_path``): a crash never leaves a half-written file, and a reader
never sees one. A run that is killed can leave such a temporary file (``.NAME.XXXXXXXX.tmp.EXT``,
``TEMP_PATTERN``); ``remove_stale_temporaries`` clears them from a folder.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import tempfile
from typing import Iterator

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.gif', '.tif', '.tiff')
VIDEO_EXTENSIONS = ('.mp4', '.mov', '.m4v', '.mkv', '.avi', '.webm')
# ``atomic_path``'s temporary files: '.' + stem + '.' + mkstemp's 8 characters + '.tmp' + suffix.
TEMP_PATTERN = re.compile(r'^\..*\.[a-z0-9_]{8}\.tmp(\.[^./]+)?$')


class UnreadableMediaError(ValueError):
  """A file that is not a readable image or video (truncated, empty, wrong content...)."""


def media_kind(path: str | os.PathLike) -> str | None:
  """'image', 'video' or None (not a type the anonymizer handles), by extension."""
  suffix = pathlib.Path(path).suffix.lower()
  if suffix in IMAGE_EXTENSIONS:
    return 'image'
  if suffix in VIDEO_EXTENSIONS:
    return 'video'
  return None


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields a temporary path beside ``dest``; renames it over ``dest`` if the block succeeds.

  The temporary name keeps ``dest``'s suffix (ffmpeg picks the container from it) and
  starts with a dot; on an error it is removed and ``dest`` is left as it was.
  """
  dest = pathlib.Path(dest)
  dest.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f'.{dest.stem}.', suffix=f'.tmp{dest.suffix}')
  os.close(fd)
  tmp = pathlib.Path(tmp)
  try:
    yield tmp
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
    os.replace(tmp, dest)
  finally:
    tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[pathlib.Path]:
  """Removes the temporary files a killed run left in ``folder`` (``TEMP_PATTERN``)."""
  folder = pathlib.Path(folder)
  removed = []
  if not folder.is_dir():
    return removed
  for path in sorted(folder.iterdir()):
    if TEMP_PATTERN.match(path.name) and path.is_file() and not path.is_symlink():
      path.unlink(missing_ok=True)
      removed.append(path)
  return removed


def check_writable(path: str | os.PathLike) -> None:
  """Raises OSError (or NotADirectoryError) unless files can be created in the folder
  ``path`` or, when it does not exist yet, in its nearest existing parent."""
  folder = pathlib.Path(path).absolute()
  while not folder.exists() and folder != folder.parent:
    folder = folder.parent
  if not folder.is_dir():
    raise NotADirectoryError(f'{folder} is a file, not a folder')
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.write-check.', suffix='.tmp')
  os.close(fd)
  os.unlink(tmp)
