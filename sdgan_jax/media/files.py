"""Which files the anonymizer handles, and writing them safely (``sdgan_jax.media``).

Every write goes to a temporary file in the destination folder and is then moved to the
destination (``atomic_path``): a crash never leaves a half-written file, and a reader never
sees one. Unless asked to replace, the move refuses a destination that exists (a hard link,
then the temporary name removed; never a rename over it), so a file someone else wrote
meanwhile is never lost. A run that is killed can leave a temporary file, named
``.NAME.sdgan-tmp-XXXXXXXX.tmp.EXT`` (``TEMP_PATTERN``: the marker is this tool's, so no
file of a user's matches by chance). A run holds a ``FolderLock`` on the folders it writes
into; ``remove_stale_temporaries`` clears a folder's temporary files, which is safe only
under that lock: no other run can be writing them then.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import re
import socket
import tempfile
from collections.abc import Iterator

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.gif', '.tif', '.tiff')
VIDEO_EXTENSIONS = ('.mp4', '.mov', '.m4v', '.mkv', '.avi', '.webm')
# ``atomic_path``'s temporary files: '.' + stem + '.sdgan-tmp-' + mkstemp's 8 characters +
# '.tmp' + suffix.
TEMP_MARKER = 'sdgan-tmp-'
TEMP_PATTERN = re.compile(r'^\..*\.' + re.escape(TEMP_MARKER) + r'[a-z0-9_]{8}\.tmp(\.[^./]+)?$')
# The lock file a run holds in each folder it writes into (``FolderLock``).
LOCK_NAME = '.sdgan-anonymize.lock'


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


class DestinationExistsError(FileExistsError):
  """``atomic_path(replace=False)`` found its destination written meanwhile (by someone
  else: the run checked it did not exist before it started)."""


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, replace: bool = True) -> Iterator[pathlib.Path]:
  """Yields a temporary path beside ``dest``; moves it to ``dest`` if the block succeeds.

  The temporary name keeps ``dest``'s suffix (ffmpeg picks the container from it), starts
  with a dot and carries ``TEMP_MARKER``; on an error it is removed and ``dest`` is left as
  it was. With ``replace=False`` an existing ``dest`` is never replaced: the move is a hard
  link, which fails if ``dest`` exists (``DestinationExistsError``), then the temporary
  name is removed.
  """
  dest = pathlib.Path(dest)
  dest.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(
    dir=dest.parent, prefix=f'.{dest.stem}.{TEMP_MARKER}', suffix=f'.tmp{dest.suffix}'
  )
  os.close(fd)
  tmp = pathlib.Path(tmp)
  try:
    yield tmp
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
    if replace:
      os.replace(tmp, dest)
    else:
      _move_no_replace(tmp, dest)
  finally:
    tmp.unlink(missing_ok=True)


def _move_no_replace(tmp: pathlib.Path, dest: pathlib.Path) -> None:
  """Moves ``tmp`` to ``dest`` unless ``dest`` exists (``DestinationExistsError``)."""
  try:
    os.link(tmp, dest)
  except FileExistsError:
    raise DestinationExistsError(
      errno.EEXIST,
      'it appeared while this run was writing (another program or run?): '
      'left as it is; run again with another --output',
      str(dest),
    ) from None
  except OSError as e:
    if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
      raise
    # A file system without hard links: the check and the rename are two steps.
    if dest.exists() or dest.is_symlink():
      raise DestinationExistsError(
        errno.EEXIST,
        'it appeared while this run was writing (another program or run?): left as it is',
        str(dest),
      ) from None
    os.rename(tmp, dest)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[pathlib.Path]:
  """Removes the temporary files a killed run left in ``folder`` (``TEMP_PATTERN``): call
  it only while holding the folder's ``FolderLock``, so that no live run owns them."""
  folder = pathlib.Path(folder)
  removed = []
  if not folder.is_dir():
    return removed
  for path in sorted(folder.iterdir()):
    if TEMP_PATTERN.match(path.name) and path.is_file() and not path.is_symlink():
      path.unlink(missing_ok=True)
      removed.append(path)
  return removed


class FolderBusyError(OSError):
  """Another live run holds a folder's ``FolderLock``."""


def _holder(path: pathlib.Path) -> str:
  """Who holds the lock file ``path``, as its holder wrote it ('' when unknown)."""
  try:
    text = path.read_text(errors='replace').strip()
  except OSError:
    return ''
  return f' ({text})' if text else ''


class FolderLock:
  """An exclusive lock on a folder for one run: ``LOCK_NAME`` in it, locked with ``flock``
  (released by the kernel when the process dies, so a killed run never leaves it held)
  and removed on release. ``FolderBusyError`` when another run holds it.

  Local file systems only: ``flock`` does not reach other hosts over some network file
  systems.
  """

  def __init__(self, folder: str | os.PathLike):
    self.folder = pathlib.Path(folder)
    self.path = self.folder / LOCK_NAME
    self._fd: int | None = None

  def acquire(self) -> FolderLock:
    import fcntl  # pylint: disable=import-outside-toplevel

    self.folder.mkdir(parents=True, exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        os.close(fd)
        raise FolderBusyError(
          errno.EBUSY,
          f'another run{_holder(self.path)} is writing into '
          f'{self.folder}: wait for it to finish, or choose another '
          'folder',
        ) from None
      except BaseException:
        os.close(fd)
        raise
      # The holder before us may have removed the file after we opened it: lock the file
      # that is at the path now.
      try:
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f'pid {os.getpid()} on {socket.gethostname()}'.encode())
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      self.path.unlink(missing_ok=True)  # while still holding it: see ``acquire``
    finally:
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> FolderLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def check_not_locked(folder: str | os.PathLike) -> None:
  """Raises ``FolderBusyError`` if another run holds ``folder``'s ``FolderLock``."""
  import fcntl  # pylint: disable=import-outside-toplevel

  path = pathlib.Path(folder) / LOCK_NAME
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return  # no lock file (or not readable: the lock itself will say)
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    raise FolderBusyError(
      errno.EBUSY,
      f'another run{_holder(path)} is writing into '
      f'{folder}: wait for it to finish, or choose another folder',
    ) from None
  finally:
    os.close(fd)


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
