"""Where the images to prepare come from (docs/data.md): an ordered identity table and a
way to get each image, as a path or as its encoded bytes."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence

from sdgan_jax.datasets import celeba_files

# (file name, identity id)
Item = tuple[str, int]
# a path to read, or the encoded image itself
Payload = str | bytes


class Source:
  """Where images come from: an ordered identity table and a way to get each image.

  Subclasses set ``name`` and implement ``index`` and ``payloads``.
  """

  name = 'source'

  def index(self) -> dict[str, int]:
    """{file name: identity id} in a fixed order (the order of the chunks)."""
    raise NotImplementedError

  def payloads(self, filenames: Sequence[str]) -> Iterator[Payload]:
    """One payload (a path or the encoded bytes) per file name, in the order given."""
    raise NotImplementedError


class FolderSource(Source):
  """Images in a folder, identities from a table: the official CelebA files, the samples.

  Args:
    images: the image folder.
    identities: {file name: identity id}; ordered by file name here.
    name: recorded in the manifest.
  """

  def __init__(
    self, images: str | os.PathLike, identities: Mapping[str, int], name: str = 'folder'
  ):
    self.images = pathlib.Path(images)
    self.identities = {f: int(identities[f]) for f in sorted(identities)}
    self.name = name

  def index(self) -> dict[str, int]:
    return dict(self.identities)

  def payloads(self, filenames: Sequence[str]) -> Iterator[Payload]:
    for filename in filenames:
      yield str(self.images / filename)


def celeba_folder_source(celeba_dir: str | os.PathLike) -> FolderSource:
  """The official CelebA files of ``celeba_dir`` (see ``celeba_files``) as a source."""
  files = celeba_files.load_celeba_dir(celeba_dir)
  return FolderSource(files.images, files.identities, name=f'celeba_files:{files.root}')
