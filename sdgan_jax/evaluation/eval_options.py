"""What an evaluation runs (``EvalOptions``) and its limits, shared by ``runner`` and
``tools/eval.py``'s flags (docs/evaluation.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from sdgan_jax.evaluation import detection as detection_lib

PAPER_RESOLUTION = 64  # paper §4.1: the quantitative evaluation is at 64x64
BASELINE_ROWS = {
  'pixelate16': 'Pixelization (16 by 16)',
  'pixelate8': 'Pixelization (8 by 8)',
  'blur9': 'Blur (9 by 9)',
  'blur17': 'Blur (17 by 17)',
}
# The least value of each integer option: ``EvalOptions`` refuses less, and tools/eval.py's
# flags take these as their limits.
LEAST = {
  'resolution': 1,
  'batch_size': 1,
  'max_faces': 1,
  'grid_faces': 1,
  'detection_size': 1,
  'detection_processes': 0,
}
_MEANINGS = {'detection_processes': ' (0: one per CPU core, 1: none)'}


@dataclasses.dataclass
class EvalOptions:
  """What ``runner.evaluate`` runs.

  Attributes:
    dataset: a prepared dataset directory (holding dataset_info.json).
    checkpoints: ``run.py`` workdirs, one model row each.
    split: comma-separated TFDS split names, e.g. 'test' (the paper) or 'train,test'.
    resolution: evaluation crop size (default 64, the paper's).
    batch_size: faces per accelerator batch.
    seed: seeds the target identities and KID's subsets.
    max_faces: evaluate only this many faces, evenly spaced over the splits.
    grid_faces: columns of the image grid.
    baselines: baseline rows (keys of ``BASELINE_ROWS``).
    detectors: any of 'hog', 'blazeface' (the anonymizer's BlazeFace ensemble, in the
      column of the paper's SSH) and 'cnn' (dlib's MMOD CNN, slow on CPUs).
    detection_size: crops are enlarged to this size for the detectors (see detection.py).
    detection_processes: worker processes running the detectors (dlib's CNN detector uses
      one core and holds the GIL); 0: one per CPU core, 1: in this process.
    embedding: weights name of the identity network (default: FaceNet if converted,
      else 'dlib_resnet').
    weights_dir: converted weights (default: ``sdgan_jax.weights.default_weights_dir``).
    progress: show progress bars.
    parser: the face-parser workdir for the models trained on parser maps, instead of the
      one each model's record names (same weights); refused for polygon models.
  """

  dataset: str
  checkpoints: Sequence[str] = ()
  split: str = 'test'
  resolution: int = PAPER_RESOLUTION
  batch_size: int = 64
  seed: int = 0
  max_faces: int | None = None
  grid_faces: int = 8
  baselines: Sequence[str] = tuple(BASELINE_ROWS)
  detectors: Sequence[str] = ('hog', 'blazeface')
  detection_size: int = 128
  detection_processes: int = 0
  embedding: str | None = None
  weights_dir: str | None = None
  progress: bool = True
  parser: str | None = None

  def __post_init__(self):
    for name, least in LEAST.items():
      value = getattr(self, name)
      if value is not None and value < least:
        raise ValueError(f'{name} must be >= {least}{_MEANINGS.get(name, "")}, got {value}')
    for name, known in (('detectors', detection_lib.DETECTOR_NAMES), ('baselines', BASELINE_ROWS)):
      unknown = sorted(set(getattr(self, name)) - set(known))
      if unknown:
        raise ValueError(f'{name} {unknown} are unknown; choose from {sorted(known)}')
