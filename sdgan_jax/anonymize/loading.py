"""``build_anonymizer``: a ``FaceAnonymizer`` from a training workdir (or a baseline): the
model, its face parser and the identity backbone loaded and checked, with errors that name
the fix (docs/anonymize.md).
"""

from __future__ import annotations

import os
import pathlib

from sdgan_jax import semantic_source
from sdgan_jax.anonymize.anonymizer import FaceAnonymizer, needs_identity
from sdgan_jax.anonymize.identity_check import IdentityBackbone
from sdgan_jax.anonymize.options import Options


def check_workdir(checkpoint: str | os.PathLike | None) -> None:
  """Raises FileNotFoundError, naming the training command, unless ``checkpoint`` is a
  folder."""
  if checkpoint is None:
    raise FileNotFoundError(
      'no --checkpoint given: train one with `make demo` (the demo model, CPU minutes) or '
      '`python run.py --config=configs/demo.py --workdir=workdirs/demo`, then pass '
      '--checkpoint workdirs/demo; or run a classic method with --baseline'
    )
  if not pathlib.Path(checkpoint).is_dir():
    raise FileNotFoundError(
      f'checkpoint workdir {checkpoint} does not exist: make it with `make demo` or '
      f'`python run.py --config=configs/demo.py --workdir={checkpoint}`'
    )


def build_anonymizer(
  checkpoint: str | os.PathLike | None = None,
  *,
  baseline: str | None = None,
  options: Options | None = None,
  weights_dir: str | os.PathLike | None = None,
  batch_size: int | None = None,
  step: int | None = None,
  dtype: str | None = None,
) -> FaceAnonymizer:
  """A ``FaceAnonymizer`` from a training workdir (or a baseline), with errors naming fixes.

  The face parser of a model trained on parser maps (``semantic_source``) is loaded and
  checked before the generator: ``options.parser_workdir``, else the one its record names.

  Raises:
    FileNotFoundError: no checkpoint / workdir (names the training command), or the identity
      backbone's weights are missing (``WeightsNotFoundError``, names ``make weights``).
    semantic_source.SemanticMapsError: the parser and the model do not match (a parser for
      a polygon model, the recorded parser missing and none given, other weights).
  """
  import jax  # pylint: disable=import-outside-toplevel

  options = options or Options()
  from sdgan_jax import cpu_export  # pylint: disable=import-outside-toplevel

  cpu_export.set_backend(options.cpu_backend)  # before any network is built
  if batch_size is None:
    batch_size = options.batch_size
  if batch_size is None:
    batch_size = 8 if jax.default_backend() == 'cpu' else 64
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  generator = parser = None
  if baseline is None:
    check_workdir(checkpoint)
    parser = semantic_source.parser_for(
      semantic_source.read_record(checkpoint),
      options.parser_workdir,
      model=f'the model {checkpoint}',
      batch_size=batch_size,
    )
    from sdgan_jax import inference  # pylint: disable=import-outside-toplevel

    generator = inference.TrainedGenerator.from_workdir(
      checkpoint, step, dtype=dtype, batch_size=batch_size
    )
  identity = None
  if needs_identity(options, generator):
    identity = IdentityBackbone(weights_dir, batch_size=batch_size)
  return FaceAnonymizer(
    generator, baseline, options, identity, weights_dir=weights_dir, parser=parser
  )
