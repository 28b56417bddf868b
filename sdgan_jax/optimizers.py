"""The optimizers of both trainers, from ``config.optim`` (docs/training.md).

No TensorFlow, clu or orbax here: the train step builds its networks' optimizers with this
on hosts without them (the GPU benchmark).
"""

from __future__ import annotations

import ml_collections
import optax


def optimizer(
  optim: ml_collections.ConfigDict,
  learning_rate=None,
  *,
  default: str = 'adam',
  always_decay: bool = False,
) -> optax.GradientTransformation:
  """``config.optim`` as an optax optimizer: 'adam' (AdamW when ``weight_decay`` is set or
  ``always_decay``) or 'sgd' (with ``momentum`` and decoupled ``weight_decay`` when given).

  ``learning_rate`` (a number or an optax schedule) defaults to ``optim.learning_rate``.
  ``always_decay`` keeps the decay stage in the chain at weight decay 0, as the parser
  trainer's checkpoints were written.
  """
  lr = optim.learning_rate if learning_rate is None else learning_rate
  name = optim.get('name', default)
  decay = optim.get('weight_decay', 0.0)
  decayed = bool(decay) or always_decay
  if name == 'adam':
    b1, b2 = optim.get('b1', 0.9), optim.get('b2', 0.999)
    if decayed:
      return optax.adamw(lr, b1=b1, b2=b2, weight_decay=decay)
    return optax.adam(lr, b1=b1, b2=b2)
  if name == 'sgd':
    sgd = optax.sgd(lr, momentum=optim.get('momentum', None))
    return optax.chain(optax.add_decayed_weights(decay), sgd) if decayed else sgd
  raise ValueError(f"unknown config.optim.name {name!r}: use 'adam' or 'sgd'")
