"""The official CelebA files read from a local folder, and the paper's identity split.

CelebA (paper §4.1, docs/data.md): TFDS's ``celeb_a`` downloads it from Google Drive, which
often fails on quota, so the same data can be read from the official files instead
(download them from http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, "Align&Cropped
Images" and the "Anno" / "Eval" folders, and unzip ``img_align_celeba.zip``):

  CELEBA_DIR/img_align_celeba/000001.jpg ...      aligned 178x218 JPEGs      (required)
  CELEBA_DIR/identity_CelebA.txt                  "000001.jpg 2880"          (required)
  CELEBA_DIR/list_eval_partition.txt              "000001.jpg 0" (0/1/2)     (optional)
  CELEBA_DIR/list_landmarks_align_celeba.txt      count, header, 5 points    (optional)
  CELEBA_DIR/list_attr_celeba.txt                 count, header, 40 x +-1    (optional)

The annotation files may also sit in ``Anno/`` or ``Eval/`` sub-folders, as in the
official download.

The identity split (paper §4.1, docs/data.md): "train on 35,579 images of 1,200 identities;
test on 363 identities with more than 30 images each"; CIAGAN's released index lists 1,563
= 1,200 + 363 CelebA identities, the ones with at least 30 images. The rule here, in
``identity_split``:

  1. count each identity's images in the identity table (the listed files, before any
     face detection, so the split does not depend on the detector);
  2. keep the identities with ``count >= min_images`` (30);
  3. sort them by identity id, ascending (CelebA ids carry no meaning, so this is as good
     as a random draw, and needs no seed);
  4. the first ``num_train`` (1,200) are the training identities, the next ``num_test``
     (363) the test identities; eligible identities past those are unused.

Labels are the index of an identity in its split's list (0..N-1). ``IdentitySplit`` is
saved as JSON beside the prepared data and in the TFDS dataset's metadata.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import pathlib
from collections.abc import Mapping

CELEBA_URL = 'http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html'
IMAGE_DIR = 'img_align_celeba'
IDENTITY_FILE = 'identity_CelebA.txt'
PARTITION_FILE = 'list_eval_partition.txt'
LANDMARKS_FILE = 'list_landmarks_align_celeba.txt'
LANDMARK_NAMES = (
  'lefteye_x',
  'lefteye_y',
  'righteye_x',
  'righteye_y',
  'nose_x',
  'nose_y',
  'leftmouth_x',
  'leftmouth_y',
  'rightmouth_x',
  'rightmouth_y',
)

# Paper §4.1 (docs/data.md).
PAPER_NUM_TRAIN = 1200
PAPER_NUM_TEST = 363
PAPER_MIN_IMAGES = 30
PAPER_TRAIN_IMAGES = 35579

SPLIT_RULE = (
  'identities with at least min_images images listed in the identity table, '
  'sorted by identity id ascending; the first num_train are train, the next '
  'num_test are test; label = index of the identity in its split list'
)


class CelebAFilesError(FileNotFoundError):
  pass


def _missing(what: str, celeba_dir: pathlib.Path, tried) -> CelebAFilesError:
  tried = ', '.join(str(p) for p in tried)
  return CelebAFilesError(
    f'CelebA {what} not found (looked for {tried}). Download the official CelebA files '
    f'from {CELEBA_URL} (Align&Cropped images: img_align_celeba.zip, unzipped; Anno: '
    f'identity_CelebA.txt, list_landmarks_align_celeba.txt, list_attr_celeba.txt; Eval: '
    f'list_eval_partition.txt) into {celeba_dir}, or use --source tfds_celeb_a'
  )


def find_file(celeba_dir: str | os.PathLike, name: str) -> pathlib.Path:
  """The path of an official annotation file in ``celeba_dir`` (or its Anno/Eval folder)."""
  root = pathlib.Path(celeba_dir)
  tried = [root / name, root / 'Anno' / name, root / 'Eval' / name]
  for path in tried:
    if path.is_file():
      return path
  raise _missing(name, root, tried)


def image_dir(celeba_dir: str | os.PathLike) -> pathlib.Path:
  """``celeba_dir/img_align_celeba`` (also accepts the doubled folder of some unzips)."""
  root = pathlib.Path(celeba_dir)
  path = root / IMAGE_DIR
  if (path / IMAGE_DIR).is_dir():
    path = path / IMAGE_DIR  # unzip of img_align_celeba.zip into a folder of the same name
  if not path.is_dir():
    if (root / f'{IMAGE_DIR}.zip').is_file():
      raise CelebAFilesError(
        f'{root / IMAGE_DIR} is missing but {IMAGE_DIR}.zip is there: '
        f'unzip it first (`unzip {root / IMAGE_DIR}.zip -d {root}`)'
      )
    raise _missing(f'image folder {IMAGE_DIR}/', root, [path])
  return path


def _data_lines(path: pathlib.Path):
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      line = line.strip()
      if line:
        yield number, line.split()


def _bad_line(path, number, fields, expected) -> ValueError:
  return ValueError(
    f'{path}:{number}: expected {expected}, got {" ".join(fields)!r}; is this '
    f'the official CelebA file?'
  )


def read_identities(path: str | os.PathLike) -> dict[str, int]:
  """``identity_CelebA.txt`` ("000001.jpg 2880" per line, no header) -> {file name: id}."""
  path = pathlib.Path(path)
  table = {}
  for number, fields in _data_lines(path):
    if len(fields) != 2 or not fields[1].isdigit():
      raise _bad_line(path, number, fields, '"<file name> <identity id>"')
    table[fields[0]] = int(fields[1])
  if not table:
    raise ValueError(f'{path} lists no images')
  return table


def read_partition(path: str | os.PathLike) -> dict[str, int]:
  """``list_eval_partition.txt`` -> {file name: 0 train | 1 validation | 2 test}."""
  path = pathlib.Path(path)
  table = {}
  for number, fields in _data_lines(path):
    if len(fields) != 2 or fields[1] not in ('0', '1', '2'):
      raise _bad_line(path, number, fields, '"<file name> <0|1|2>"')
    table[fields[0]] = int(fields[1])
  return table


def _read_headed_table(path: pathlib.Path, kind: str) -> tuple[list[str], dict[str, list[int]]]:
  """The landmark/attribute layout: a count line, a header line, then "<file> v1 v2 ...""."""
  lines = _data_lines(path)
  try:
    _, count = next(lines)
    _, header = next(lines)
  except StopIteration:
    raise ValueError(f'{path} is too short to be the official {kind} file') from None
  if len(count) != 1 or not count[0].isdigit():
    raise _bad_line(path, 1, count, 'the number of images on the first line')
  table = {}
  for number, fields in lines:
    if len(fields) != len(header) + 1:
      raise _bad_line(path, number, fields, f'a file name and {len(header)} values')
    try:
      table[fields[0]] = [int(v) for v in fields[1:]]
    except ValueError:
      raise _bad_line(path, number, fields, 'integer values') from None
  if len(table) != int(count[0]):
    raise ValueError(
      f'{path} announces {count[0]} images but lists {len(table)}: the file is '
      'truncated or not the official one'
    )
  return header, table


def read_landmarks(path: str | os.PathLike) -> dict[str, list[int]]:
  """``list_landmarks_align_celeba.txt`` -> {file name: 10 ints in ``LANDMARK_NAMES`` order}."""
  header, table = _read_headed_table(pathlib.Path(path), 'landmark')
  if tuple(header) != LANDMARK_NAMES:
    raise ValueError(f'{path}: unexpected header {header}, expected {LANDMARK_NAMES}')
  return table


def read_attributes(path: str | os.PathLike) -> tuple[list[str], dict[str, list[int]]]:
  """``list_attr_celeba.txt`` -> (40 attribute names, {file name: 40 values of +-1})."""
  return _read_headed_table(pathlib.Path(path), 'attribute')


@dataclasses.dataclass(frozen=True)
class CelebAFiles:
  """The official CelebA files of one folder.

  Attributes:
    root: the CelebA folder.
    images: the folder of aligned JPEGs.
    identities: {file name: identity id} from ``identity_CelebA.txt``.
    partition: {file name: 0/1/2 (train, validation, test)} from
      ``list_eval_partition.txt`` (empty when absent).
  """

  root: pathlib.Path
  images: pathlib.Path
  identities: dict[str, int]
  partition: dict[str, int]


def _download_hint(root: pathlib.Path) -> str:
  return (
    f'download the official CelebA files from {CELEBA_URL} (Align&Cropped images: '
    f'{IMAGE_DIR}.zip, unzipped; Anno: {IDENTITY_FILE}; Eval: {PARTITION_FILE}) into '
    f'{root}, or use --source tfds_celeb_a'
  )


def _elsewhere_hint(root: pathlib.Path) -> str:
  """'did you mean ...?' when ``root`` looks like a neighbour of the CelebA folder."""
  if root.name == IMAGE_DIR or next(root.glob('*.jpg'), None) is not None:
    return f'it looks like the image folder itself: pass its parent, {root.parent}'
  for pattern in (f'*/{IMAGE_DIR}', f'*/{IDENTITY_FILE}', f'*/Anno/{IDENTITY_FILE}'):
    found = next(root.glob(pattern), None)
    if found is not None:
      parent = found.parent.parent if found.parent.name == 'Anno' else found.parent
      return f'did you mean --celeba_dir {parent}?'
  return ''


def _check_folder(root: pathlib.Path) -> None:
  """``root`` must be a folder holding the required official files (CelebAFilesError)."""
  if not root.exists():
    raise CelebAFilesError(f'CelebA folder {root} does not exist: {_download_hint(root)}')
  if not root.is_dir():
    unzip = (
      f'; unzip it first (`unzip {root} -d {root.parent}`) and pass {root.parent}'
      if root.suffix == '.zip'
      else ''
    )
    raise CelebAFilesError(
      f'CelebA folder {root} is a file, not a folder: pass the folder '
      f'holding {IMAGE_DIR}/ and {IDENTITY_FILE}{unzip}'
    )
  missing = []
  try:
    image_dir(root)
  except CelebAFilesError:
    if (root / f'{IMAGE_DIR}.zip').is_file():
      raise  # "unzip it first"
    missing.append(f'{IMAGE_DIR}/')
  try:
    find_file(root, IDENTITY_FILE)
  except CelebAFilesError:
    missing.append(IDENTITY_FILE)
  if missing:
    raise CelebAFilesError(
      f'CelebA folder {root} lacks the official {" and ".join(missing)} (looked in it and '
      f'its Anno/ and Eval/): {_elsewhere_hint(root) or _download_hint(root)}'
    )


def load_celeba_dir(celeba_dir: str | os.PathLike) -> CelebAFiles:
  """Reads the identity table (required) and the partition (if present) of a CelebA folder."""
  root = pathlib.Path(celeba_dir)
  _check_folder(root)
  images = image_dir(root)
  identities = read_identities(find_file(root, IDENTITY_FILE))
  try:
    partition = read_partition(find_file(root, PARTITION_FILE))
  except CelebAFilesError:
    partition = {}
  return CelebAFiles(root=root, images=images, identities=identities, partition=partition)


@dataclasses.dataclass
class IdentitySplit:
  """The identity split of paper §4.1 (see the module docstring for the rule).

  Attributes:
    train: training identity ids; label = position in this list.
    test: test identity ids; label = position in this list.
    min_images, num_train, num_test: the rule's parameters.
    num_identities: identities in the table.
    num_eligible: identities with at least ``min_images`` images.
    images_listed: {'train': n, 'test': n} images of each split in the identity table.
    images_prepared: {'train': n, 'test': n} faces kept by the preparation (filled later).
    source: where the identity table came from.
  """

  train: list[int]
  test: list[int]
  min_images: int
  num_train: int
  num_test: int
  num_identities: int
  num_eligible: int
  images_listed: dict[str, int]
  images_prepared: dict[str, int] = dataclasses.field(default_factory=dict)
  source: str = ''

  def split_of(self, identity: int) -> str | None:
    """'train', 'test', or None for an identity outside the split."""
    return self._lookup.get(int(identity), (None, None))[0]

  def label_of(self, identity: int) -> int:
    """The identity's label within its split (0..N-1); KeyError outside the split."""
    try:
      return self._lookup[int(identity)][1]
    except KeyError:
      raise KeyError(f'identity {identity} is in neither the train nor the test split') from None

  @functools.cached_property
  def _lookup(self) -> dict[int, tuple[str, int]]:
    table = {ident: ('train', i) for i, ident in enumerate(self.train)}
    table.update({ident: ('test', i) for i, ident in enumerate(self.test)})
    return table

  def to_json(self) -> dict:
    return {
      'rule': SPLIT_RULE,
      'min_images': self.min_images,
      'num_train': self.num_train,
      'num_test': self.num_test,
      'num_identities': self.num_identities,
      'num_eligible': self.num_eligible,
      'source': self.source,
      'images_listed': dict(self.images_listed),
      'images_prepared': dict(self.images_prepared),
      'paper': {
        'num_train': PAPER_NUM_TRAIN,
        'num_test': PAPER_NUM_TEST,
        'train_images': PAPER_TRAIN_IMAGES,
        'min_images': PAPER_MIN_IMAGES,
      },
      'train': {
        'identities': list(self.train),
        'label_of_identity': {str(i): n for n, i in enumerate(self.train)},
      },
      'test': {
        'identities': list(self.test),
        'label_of_identity': {str(i): n for n, i in enumerate(self.test)},
      },
    }

  @classmethod
  def from_json(cls, data: Mapping) -> IdentitySplit:
    return cls(
      train=[int(i) for i in data['train']['identities']],
      test=[int(i) for i in data['test']['identities']],
      min_images=int(data['min_images']),
      num_train=int(data['num_train']),
      num_test=int(data['num_test']),
      num_identities=int(data['num_identities']),
      num_eligible=int(data['num_eligible']),
      images_listed=dict(data['images_listed']),
      images_prepared=dict(data.get('images_prepared', {})),
      source=data.get('source', ''),
    )

  def save(self, path: str | os.PathLike) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + '.tmp')
    tmp.write_text(json.dumps(self.to_json(), indent=1) + '\n')
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str | os.PathLike) -> IdentitySplit:
    return cls.from_json(json.loads(pathlib.Path(path).read_text()))


def identity_split(
  identities: Mapping[str, int],
  num_train: int | None = PAPER_NUM_TRAIN,
  num_test: int | None = PAPER_NUM_TEST,
  min_images: int = PAPER_MIN_IMAGES,
  source: str = '',
) -> IdentitySplit:
  """The paper's identity split of an identity table (rule in the module docstring).

  Args:
    identities: {file name: identity id}, e.g. ``read_identities(identity_CelebA.txt)``.
    num_train: training identities (1,200); None: all eligible ones not in the test split
      (needs ``num_test``).
    num_test: test identities (363); None: all eligible ones after the training ones.
    min_images: the least number of images an identity needs (30).
    source: a note on where the table came from, stored with the split.

  Raises:
    ValueError: fewer eligible identities than ``num_train + num_test``.
  """
  if num_train is None and num_test is None:
    raise ValueError('give num_train or num_test (or both)')
  if min_images < 1:
    raise ValueError(f'min_images must be >= 1, got {min_images}')
  counts = collections.Counter(int(i) for i in identities.values())
  eligible = sorted(i for i, n in counts.items() if n >= min_images)
  if num_train is None:
    num_train = len(eligible) - num_test
  if num_test is None:
    num_test = len(eligible) - num_train
  if num_train < 1 or num_test < 1 or num_train + num_test > len(eligible):
    raise ValueError(
      f'the split needs {num_train} train + {num_test} test identities with at least '
      f'{min_images} images each, but the identity table ({len(counts)} identities, '
      f'{len(identities)} images) has only {len(eligible)} such identities; lower '
      'min_images or the identity counts (--min_images, --num_train, --num_test)'
    )
  train, test = eligible[:num_train], eligible[num_train : num_train + num_test]
  return IdentitySplit(
    train=train,
    test=test,
    min_images=min_images,
    num_train=num_train,
    num_test=num_test,
    num_identities=len(counts),
    num_eligible=len(eligible),
    images_listed={'train': sum(counts[i] for i in train), 'test': sum(counts[i] for i in test)},
    source=source,
  )
