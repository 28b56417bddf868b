"""Prepared faces (TFDS) -> tf.data -> numpy batches, sharded per JAX process (README.md
"Layout"; the data: docs/data.md).

Training batches (paper §4.1, docs/training.md, docs/data.md): pixels in [0, 1], an
augmentation (``augment.PRESETS``: by default resize the 128-px record to 144, random 128
crop, resize to the training resolution, random horizontal flip; or the authors' random
zoom box), and for the contrastive identity network a
paired image that shows the same identity for half of the batch and another identity for
the other half.

Determinism: everything is a function of ``(seed, step)``, so a run restarted at step k
yields exactly the batches an uninterrupted run yields from step k on (``plan``):

* epoch ``e`` visits the examples in the order of a permutation seeded by ``(seed, e)``;
  an epoch has ``len(source) // batch_size`` steps (the few examples left over are dropped,
  a different few each epoch); global batch ``j`` of the epoch is ``perm[j*B:(j+1)*B]``;
* JAX process ``p`` of ``P`` takes the contiguous slice ``[p*B/P, (p+1)*B/P)`` of every
  global batch, so the processes' shards are disjoint, cover the epoch, and the global
  batch does not depend on how many processes read it;
* pairs: position ``i`` of a global batch is paired with the same identity when ``i`` is
  even and with another identity when odd (exactly half and half in every batch); the
  partner is drawn uniformly from the other examples of the same identity (the example
  itself when its identity has no other) or uniformly from all examples of other
  identities, with a generator seeded by ``(seed, epoch, j)``;
* targets (paper §3.4: the generator is pulled towards "the desired identity"): every
  example also gets a target example, drawn uniformly from the examples of the other
  identities (never its own; ``sdgan_jax.targets``), whose image and identity the
  generator's identity term uses;
* fresh batches (``slots`` > 1, the authors' schedule: every update of a step sees its own
  batch): a step's global batch is ``slots`` consecutive batches of ``batch_size``, and
  each process takes its share of every one of them, so the arrays come as
  ``[slots, local batch, ...]``;
* the authors' sampler instead (``sampling='authors'``, ``TrainPlan``): identities uniform
  with replacement, no epochs, drawn from a generator seeded by ``(seed, step)``;
* augmentation uses TensorFlow's stateless random ops seeded by ``(seed, 3*n + role)``,
  ``n`` the global sample number ``step*B + i`` and role 0 for the example, 1 for its pair
  and 2 for its target (each gets its own augmentation).

The permutations and partner draws use numpy's ``SeedSequence``/PCG64 generator, whose
streams numpy keeps stable; restarting on another numpy or TensorFlow version may still
change the order of examples or the augmentation (not the sharding).

Sources (``sources``): a TFDS random-access data source (``load_data_source``) or any
sequence of example dicts in the record format of ``sdgan_jax.datasets.features``.

TensorFlow is imported on the training side only (this package, the trainers, the TFDS
builder; README.md "Layout"): models, losses, the train step, inference and the benchmark
path never import it.
"""

from __future__ import annotations

from sdgan_jax.input_pipeline.augment import (
  AUTHORS_RESIZE_SCALE,
  MIRROR_CLASSES,
  MIRROR_LANDMARKS,
  NO_AUGMENTATION,
  Augmentation,
  preprocess,
)
from sdgan_jax.input_pipeline.iterators import eval_iterator, train_dataset, train_iterator
from sdgan_jax.input_pipeline.plan import TrainPlan, eval_shard, steps_per_epoch
from sdgan_jax.input_pipeline.sources import load_data_source, read_labels

__all__ = [
  'AUTHORS_RESIZE_SCALE',
  'MIRROR_CLASSES',
  'MIRROR_LANDMARKS',
  'NO_AUGMENTATION',
  'Augmentation',
  'TrainPlan',
  'eval_iterator',
  'eval_shard',
  'load_data_source',
  'preprocess',
  'read_labels',
  'steps_per_epoch',
  'train_dataset',
  'train_iterator',
]
