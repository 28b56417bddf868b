"""A fake CelebA folder in the official file layout, made from the real sample face photos.

Three real people under CelebA-like identity ids, each photo cut into several CelebA-style
aligned 178x218 crops with small random rotations, scales, shifts, mirrors and brightness
changes (``sdgan_jax.datasets.samples``), plus the cases the preparation must report:

  * a truncated JPEG (the first 40 % of a real face's file)           -> 'unreadable'
  * a real photo without a face (scikit-image's ``chelsea``, a cat)   -> 'no_face'
  * a file listed in identity_CelebA.txt but absent from the folder   -> 'missing'
  * an identity with only 2 images, below the split's ``min_images``   -> not in the split

The files are shuffled, so identities are interleaved as in CelebA.

Import from test files as ``import fake_celeba`` (pytest puts ``tests/`` on sys.path).
"""

from __future__ import annotations

import dataclasses
import io
import pathlib

import numpy as np
from PIL import Image

from sdgan_jax.datasets import samples

# photo -> CelebA-style identity id (non-contiguous, unordered: labels must be remapped).
IDENTITY_OF_PHOTO = {'obama': 2880, 'obama2': 2880, 'obama3': 2880, 'biden': 17, 'astronaut': 4021}
COPIES = {'obama': 2, 'obama2': 2, 'obama3': 2, 'biden': 5, 'astronaut': 5}
FEW_IMAGES_ID = 9
SPLIT = {'num_train': 2, 'num_test': 1, 'min_images': 4}
# The rule: eligible ids sorted ascending -> [17, 2880 | 4021]; 9 has too few images.
EXPECTED_TRAIN = [17, 2880]
EXPECTED_TEST = [4021]


@dataclasses.dataclass
class FakeCelebA:
  """What went into the folder.

  Attributes:
    root: the CelebA-style folder.
    identities: {file name: identity id}, as identity_CelebA.txt lists them.
    kind: {file name: 'face' | 'unreadable' | 'no_face' | 'missing' | 'few'}.
    photo: {file name: source photo name} for the face crops.
  """

  root: pathlib.Path
  identities: dict[str, int]
  kind: dict[str, str]
  photo: dict[str, str]

  def files(self, kind: str) -> list[str]:
    return sorted(f for f, k in self.kind.items() if k == kind)


def _jpeg(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, 'JPEG', quality=92)
  return buffer.getvalue()


def make_fake_celeba(root, cache_dir, seed: int = 0) -> FakeCelebA:
  from skimage import data  # pylint: disable=import-outside-toplevel

  photos = samples.fetch_sample_photos(cache_dir)
  rng = np.random.default_rng(seed)
  entries, kinds, sources = [], [], []
  for name, copies in COPIES.items():
    landmarks = samples.photo_landmarks(photos[name])
    for k in range(copies):
      crop, five = samples.celeba_style_crop(photos[name], landmarks, rng if k else None)
      entries.append(samples.FolderEntry(IDENTITY_OF_PHOTO[name], crop, five, note=name))
      kinds.append('face')
      sources.append(name)
  truncated = _jpeg(entries[6].image)  # biden's first crop
  entries.append(
    samples.FolderEntry(17, truncated[: int(len(truncated) * 0.4)], note='truncated JPEG')
  )
  kinds.append('unreadable')
  sources.append('')
  cat = Image.fromarray(data.chelsea()).crop((80, 0, 325, 300)).resize((178, 218))
  entries.append(samples.FolderEntry(4021, np.asarray(cat), note='cat, no face'))
  kinds.append('no_face')
  sources.append('')
  entries.append(samples.FolderEntry(17, entries[7].image, note='deleted after writing'))
  kinds.append('missing')
  sources.append('')
  for value in (90, 160):
    entries.append(
      samples.FolderEntry(
        FEW_IMAGES_ID, np.full((218, 178, 3), value, np.uint8), note='identity with too few images'
      )
    )
    kinds.append('few')
    sources.append('')
  order = rng.permutation(len(entries))
  entries = [entries[i] for i in order]
  kinds = [kinds[i] for i in order]
  sources = [sources[i] for i in order]
  root = samples.write_celeba_folder(root, entries, readme='fake CelebA for tests')
  names = [f'{n:06d}.jpg' for n in range(1, len(entries) + 1)]
  for name, kind in zip(names, kinds):
    if kind == 'missing':
      (root / 'img_align_celeba' / name).unlink()
  return FakeCelebA(
    root=root,
    identities={n: e.identity for n, e in zip(names, entries)},
    kind=dict(zip(names, kinds)),
    photo={n: s for n, s in zip(names, sources) if s},
  )
