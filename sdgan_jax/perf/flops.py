"""FLOPs of the networks and of lowered programs (docs/network.md, docs/performance.md).

``network_flops`` is what ``tools/benchmark.py --flops`` prints: per network, the forward
GFLOP per image counted from the traced jaxpr (``conv_dense_flops``, the convention of the
authors' figures) beside XLA's count (``lowered_flops``). Nothing here compiles or runs a
program.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core
import jax.numpy as jnp
import ml_collections

from sdgan_jax import networks as networks_lib
from sdgan_jax.models import discriminator as discriminator_lib
from sdgan_jax.models import generator as generator_lib
from sdgan_jax.models.layers import count_params


def lowered_flops(lowered) -> float | None:
  """FLOPs of the program as lowered, before backend optimisation.

  The compiled program's cost analysis is not used: on GPU, convolutions become cuDNN
  custom calls that it does not count (an H200 run reported 0.08 GFLOP for a 42.9 GFLOP
  generator forward).
  """
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and 'flops' in cost else None


# The authors' figures for their networks at 128 px, 11 classes, 2048-d identity:
# (forward GFLOP per image, trainable parameters).
AUTHORS_FIGURES = {
  'generator': (41.2, 16.88e6),
  'discriminator': (7.8, 18.24e6),
  'identity': (17.8, 12.92e6),
}


def _subjaxprs(params: dict):
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax.extend.core.Jaxpr):
        yield item


def _jaxpr_macs(jaxpr, repeat: int = 1) -> int:
  """Multiply-adds of the convolutions and dot products in ``jaxpr`` (nested ones too)."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      kernel, out = eqn.invars[1].aval, eqn.outvars[0].aval
      out_features = kernel.shape[eqn.params['dimension_numbers'].rhs_spec[0]]
      # every output element: kernel taps x input channels per group, padding included
      total += repeat * math.prod(out.shape) * (math.prod(kernel.shape) // out_features)
    elif name == 'dot_general':
      lhs, out = eqn.invars[0].aval, eqn.outvars[0].aval
      (contracting, _), _ = eqn.params['dimension_numbers']
      total += repeat * math.prod(out.shape) * math.prod(lhs.shape[d] for d in contracting)
    else:
      times = repeat * (eqn.params.get('length', 1) if name == 'scan' else 1)
      for sub in _subjaxprs(eqn.params):
        total += _jaxpr_macs(sub, times)
  return total


def conv_dense_flops(fn: Callable, *args) -> int:
  """FLOPs of ``fn(*args)``'s convolutions and matmuls: 2 per multiply-add, counted from
  the traced jaxpr (``args`` may be ``jax.ShapeDtypeStruct``s: nothing runs)."""
  return 2 * _jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def _network_inputs(config, network: str, batch: int) -> tuple:
  r, f32 = int(config.resolution), jnp.float32
  image = jax.ShapeDtypeStruct((batch, r, r, 3), f32)
  semantic = jax.ShapeDtypeStruct((batch, r, r, int(config.num_classes)), f32)
  if network == 'generator':
    return image, semantic, jax.ShapeDtypeStruct((batch, int(config.identity_dim)), f32)
  if network == 'discriminator':
    return image, semantic
  return (image,)


def build_networks(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The generator, discriminator and identity network a config describes, in float32."""
  config = config.copy_and_resolve_references()
  config.dtype = 'float32'
  networks = networks_lib.Networks(config)
  return {name: getattr(networks, name) for name in ('generator', 'discriminator', 'identity')}


def _authors_kind(network: str, module) -> bool:
  if network == 'generator':
    return isinstance(module, generator_lib.AuthorsGenerator)
  if network == 'discriminator':
    return isinstance(module, discriminator_lib.GlobalDiscriminator)
  return getattr(module, 'stem', None) == 'cifar'


def network_flops(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """Per network: forward GFLOP per image, trainable parameters and the authors' figures.

  Nothing is compiled or run: variables come from ``jax.eval_shape`` and FLOPs from the
  traced / lowered inference-mode forward, so this takes seconds on a CPU.

  ``gflop_per_image`` follows the convention that reproduces the authors' figures (41.2,
  7.8 and 17.8 GFLOP at 128 px): convolutions and dense layers only, a multiply-add counts
  2 FLOP, and every kernel tap counts, those over zero padding included (output elements x
  kernel area x input channels per group). It is the count at batch 2 minus the count at
  batch 1, which drops the work that does not depend on the batch (spectral norm's power
  iteration on the weights). ``xla_gflop`` is XLA's cost analysis of the lowered batch-1
  forward (``lowered_flops``), for comparison: it also counts elementwise work and the power
  iteration, but skips the taps over zero padding, so it reads lower for the zero-padded
  generator and identity network (40.4 and 17.2) and higher for the reflect-padded
  discriminator (7.9). ``authors_gflop`` / ``authors_params`` are given at 128 px for the
  authors' kinds of network only (``AuthorsGenerator``, ``GlobalDiscriminator``, the
  CIFAR-stem identity net), else None.
  """
  config = config.copy_and_resolve_references()
  rows = []
  for network, module in build_networks(config).items():
    forward = lambda variables, *inputs, module=module: module.apply(variables, *inputs)
    inputs1 = _network_inputs(config, network, 1)
    variables = jax.eval_shape(
      lambda *a, module=module: module.init(jax.random.key(0), *a), *inputs1
    )
    per_image = conv_dense_flops(
      forward, variables, *_network_inputs(config, network, 2)
    ) - conv_dense_flops(forward, variables, *inputs1)
    xla = lowered_flops(jax.jit(forward).lower(variables, *inputs1))
    authors = (
      AUTHORS_FIGURES[network]
      if int(config.resolution) == 128 and _authors_kind(network, module)
      else (None, None)
    )
    rows.append(
      dict(
        network=network,
        resolution=int(config.resolution),
        gflop_per_image=per_image / 1e9,
        params=count_params(variables),
        xla_gflop=xla / 1e9 if xla else None,
        authors_gflop=authors[0],
        authors_params=authors[1],
      )
    )
  return rows
