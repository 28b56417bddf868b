"""A jaxpr written out as TensorFlow ops, so that TensorFlow's own (oneDNN) kernels run it.

``jax2tf`` in the JAX this project pins always wraps the program in one ``XlaCallModule``
op: TensorFlow then runs it through XLA again, whose CPU backend does not reach the matrix
units (docs/cpu_inference.md). This module instead walks the traced program of a Flax
network one primitive at a time and emits the TensorFlow op that computes the same thing:
convolutions become ``tf.nn.conv2d`` / ``depthwise_conv2d``, ``dot_general`` an ``einsum``,
which oneDNN runs in bfloat16 on AMX or AVX512-BF16 cores.

Only the primitives of this project's inference networks are covered (generator presets,
BlazeFace, the face mesh); any other raises ``UnsupportedPrimitive`` naming it, and the
caller keeps the XLA path. With ``matmul_dtype=tf.bfloat16`` the operands of convolutions
and matrix products are rounded to bfloat16 and the products accumulate and come back in
float32 (the autocast rule: everything else stays float32).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

import numpy as np

# Bump when the emitted graph changes for the same jaxpr: part of the cache key.
VERSION = 1


class UnsupportedPrimitive(NotImplementedError):
  """The program uses a primitive (or a form of one) this lowering does not write."""


def _tf():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  return tf


def _dtype(dtype):
  tf = _tf()
  return tf.as_dtype(np.dtype(dtype))


def _binary(name):
  def lower(tf, x, y, **_):
    return getattr(tf.math, name)(x, y)

  return lower


def _unary(fn: Callable):
  def lower(tf, x, **_):
    return fn(tf)(x)

  return lower


def _div(tf, x, y, **_):
  if x.dtype.is_integer:  # lax.div rounds integers toward zero
    return tf.truncatediv(x, y)
  return tf.math.divide(x, y)


def _rem(tf, x, y, **_):
  if x.dtype.is_integer:  # lax.rem takes the sign of x (C's %), not of y
    return tf.truncatemod(x, y)
  quotient = x / y
  return x - y * tf.sign(quotient) * tf.floor(tf.abs(quotient))


def _convert(tf, x, new_dtype, **_):
  return tf.cast(x, _dtype(new_dtype))


def _broadcast_in_dim(tf, x, shape, broadcast_dimensions, **_):
  kept = [1] * len(shape)
  for src, dst in enumerate(broadcast_dimensions):
    kept[dst] = x.shape[src]
  return tf.broadcast_to(tf.reshape(x, kept), shape)


def _reshape(tf, x, new_sizes, dimensions=None, **_):
  if dimensions is not None:
    raise UnsupportedPrimitive('reshape with dimensions')
  return tf.reshape(x, new_sizes)


def _slice(tf, x, start_indices, limit_indices, strides=None, **_):
  return tf.strided_slice(
    x, list(start_indices), list(limit_indices), list(strides or [1] * len(start_indices))
  )


def _pad(tf, x, value, padding_config, **_):
  if any(interior for _, _, interior in padding_config):
    raise UnsupportedPrimitive('pad with interior padding')
  # negative edges crop: pad the positive part, then cut
  out = tf.pad(x, [(max(lo, 0), max(hi, 0)) for lo, hi, _ in padding_config], constant_values=value)
  begin = [max(-lo, 0) for lo, _, _ in padding_config]
  end = [d - max(-hi, 0) for d, (_, hi, _) in zip(out.shape, padding_config)]
  return tf.strided_slice(out, begin, end) if any(begin) or end != list(out.shape) else out


def _select_n(tf, which, *cases):
  if len(cases) == 1:
    return cases[0]
  if len(cases) != 2:
    raise UnsupportedPrimitive(f'select_n of {len(cases)} cases')
  pred = which if which.dtype == tf.bool else tf.not_equal(which, 0)
  return tf.where(pred, cases[1], cases[0])


def _iota(tf, dtype, shape, dimension, **_):
  ramp = tf.range(shape[dimension], dtype=_dtype(dtype))
  return _broadcast_in_dim(tf, ramp, shape, (dimension,))


def _reduce(name):
  def lower(tf, x, axes, **_):
    return getattr(tf.math, name)(x, axis=list(axes))

  return lower


def _reduce_window(kind):
  def lower(tf, x, window_dimensions, window_strides, padding, base_dilation, window_dilation, **_):
    if set(base_dilation) != {1} or set(window_dilation) != {1} or x.shape.rank != 4:
      raise UnsupportedPrimitive(f'reduce_window_{kind} other than a 2-D NHWC pool')
    if window_dimensions[0] != 1 or window_dimensions[3] != 1:
      raise UnsupportedPrimitive(f'reduce_window_{kind} across batch or channels')
    fill = x.dtype.min if kind == 'max' else 0
    x = tf.pad(x, list(padding), constant_values=fill) if any(map(any, padding)) else x
    size, stride = list(window_dimensions[1:3]), list(window_strides[1:3])
    if kind == 'max':
      return tf.nn.max_pool2d(x, size, stride, 'VALID')
    return tf.nn.avg_pool2d(x, size, stride, 'VALID') * float(np.prod(size))

  return lower


def _matmul_cast(tf, x, ctx):
  return tf.cast(x, ctx['matmul_dtype']) if x.dtype != ctx['matmul_dtype'] else x


def _dot_general(tf, x, y, dimension_numbers, preferred_element_type=None, _ctx=None, **_):
  (lc, rc), (lb, rb) = dimension_numbers
  letters = iter(string.ascii_letters)
  xs = [next(letters) for _ in range(x.shape.rank)]
  ys = [None] * y.shape.rank
  for a, b in zip(lb, rb):
    ys[b] = xs[a]
  for a, b in zip(lc, rc):
    ys[b] = xs[a]
  ys = [s or next(letters) for s in ys]
  # lax's output order: batch dims, then lhs free dims, then rhs free dims
  out = (
    [xs[a] for a in lb]
    + [s for i, s in enumerate(xs) if i not in lb and i not in lc]
    + [s for i, s in enumerate(ys) if i not in rb and i not in rc]
  )
  result_dtype = _dtype(preferred_element_type) if preferred_element_type else x.dtype
  if x.dtype.is_floating:
    x, y = _matmul_cast(tf, x, _ctx), _matmul_cast(tf, y, _ctx)
  out = tf.einsum(f'{"".join(xs)},{"".join(ys)}->{"".join(out)}', x, y)
  return tf.cast(out, result_dtype)


def _conv(
  tf,
  x,
  w,
  window_strides,
  padding,
  lhs_dilation,
  rhs_dilation,
  dimension_numbers,
  feature_group_count,
  batch_group_count,
  preferred_element_type=None,
  _ctx=None,
  **_,
):
  lhs, rhs, out = dimension_numbers.lhs_spec, dimension_numbers.rhs_spec, dimension_numbers.out_spec
  if len(lhs) != 4 or set(lhs_dilation) != {1} or batch_group_count != 1:
    raise UnsupportedPrimitive(
      'conv_general_dilated other than a 2-D convolution without input dilation'
    )
  result_dtype = _dtype(preferred_element_type) if preferred_element_type else x.dtype
  # lax specs list (batch, feature, spatial...) / (out feature, in feature, spatial...)
  x = tf.transpose(x, [lhs[0], lhs[2], lhs[3], lhs[1]])  # NHWC
  w = tf.transpose(w, [rhs[2], rhs[3], rhs[1], rhs[0]])  # HWIO
  x, w = _matmul_cast(tf, x, _ctx), _matmul_cast(tf, w, _ctx)
  pads = [[0, 0], list(padding[0]), list(padding[1]), [0, 0]]
  if min(min(p) for p in pads) < 0:
    raise UnsupportedPrimitive('conv_general_dilated with negative padding')
  strides = [1, *window_strides, 1]
  groups, channels = feature_group_count, x.shape[3]
  if groups == 1:
    y = tf.nn.conv2d(x, w, strides, pads, dilations=[1, *rhs_dilation, 1])
  elif groups == channels:
    # [H, W, 1, C*m] -> depthwise's [H, W, C, m]
    w = tf.reshape(w, [w.shape[0], w.shape[1], channels, w.shape[3] // channels])
    x = tf.pad(x, pads) if any(map(any, pads)) else x
    y = tf.nn.depthwise_conv2d(x, w, strides, 'VALID', dilations=list(rhs_dilation))
  else:  # grouped: one convolution per group (TensorFlow's CPU kernels have no groups)
    xs = tf.split(x, groups, axis=3)
    ws = tf.split(w, groups, axis=3)
    y = tf.concat(
      [tf.nn.conv2d(a, b, strides, pads, dilations=[1, *rhs_dilation, 1]) for a, b in zip(xs, ws)],
      axis=3,
    )
  inverse = np.argsort([out[0], out[2], out[3], out[1]])  # NHWC -> out_spec order
  return tf.cast(tf.transpose(y, list(inverse)), result_dtype)


def _split(tf, x, sizes, axis, **_):
  return tf.split(x, [int(s) for s in sizes], axis=axis)


def _integer_pow(tf, x, y, **_):
  return tf.math.pow(x, tf.cast(y, x.dtype))


_RULES: dict[str, Callable] = {
  'add': _binary('add'),
  'sub': _binary('subtract'),
  'mul': _binary('multiply'),
  'div': _div,
  'rem': _rem,
  'max': _binary('maximum'),
  'min': _binary('minimum'),
  'pow': _binary('pow'),
  'atan2': _binary('atan2'),
  'eq': _binary('equal'),
  'ne': _binary('not_equal'),
  'gt': _binary('greater'),
  'ge': _binary('greater_equal'),
  'lt': _binary('less'),
  'le': _binary('less_equal'),
  'and': _binary('logical_and'),
  'or': _binary('logical_or'),
  'not': _unary(lambda tf: tf.logical_not),
  'neg': _unary(lambda tf: tf.negative),
  'abs': _unary(lambda tf: tf.abs),
  'exp': _unary(lambda tf: tf.exp),
  'log': _unary(lambda tf: tf.math.log),
  'sqrt': _unary(lambda tf: tf.sqrt),
  'rsqrt': _unary(lambda tf: tf.math.rsqrt),
  'tanh': _unary(lambda tf: tf.tanh),
  'logistic': _unary(lambda tf: tf.sigmoid),
  'square': _unary(lambda tf: tf.square),
  'sign': _unary(lambda tf: tf.sign),
  'floor': _unary(lambda tf: tf.floor),
  'ceil': _unary(lambda tf: tf.math.ceil),
  'round': _unary(lambda tf: tf.round),
  'erf': _unary(lambda tf: tf.math.erf),
  'stop_gradient': _unary(lambda tf: tf.identity),
  'copy': _unary(lambda tf: tf.identity),
  'copy_p': _unary(lambda tf: tf.identity),
  'integer_pow': _integer_pow,
  'convert_element_type': _convert,
  'broadcast_in_dim': _broadcast_in_dim,
  'reshape': _reshape,
  'squeeze': lambda tf, x, dimensions, **_: tf.reshape(
    x, [d for i, d in enumerate(x.shape) if i not in dimensions]
  ),
  'expand_dims': lambda tf, x, dimensions, **_: tf.reshape(x, _expanded(x, dimensions)),
  'transpose': lambda tf, x, permutation, **_: tf.transpose(x, list(permutation)),
  'rev': lambda tf, x, dimensions, **_: tf.reverse(x, list(dimensions)),
  'slice': _slice,
  'pad': _pad,
  'select_n': _select_n,
  'iota': _iota,
  'concatenate': lambda tf, *xs, dimension, **_: tf.concat(xs, dimension),
  'stack': lambda tf, *xs, axis, **_: tf.stack(xs, axis),
  'split': _split,
  'reduce_sum': _reduce('reduce_sum'),
  'reduce_max': _reduce('reduce_max'),
  'reduce_min': _reduce('reduce_min'),
  'argmax': None,
  'reduce_window_max': _reduce_window('max'),
  'reduce_window_sum': _reduce_window('sum'),
  'dot_general': _dot_general,
  'conv_general_dilated': _conv,
}
_NEEDS_CONTEXT = {'dot_general', 'conv_general_dilated'}
# Calls whose body is another jaxpr, and the parameter holding it.
_CALLS = {
  'jit': 'jaxpr',
  'pjit': 'jaxpr',
  'custom_jvp_call': 'call_jaxpr',
  'custom_vjp_call': 'call_jaxpr',
  'closed_call': 'call_jaxpr',
  'remat': 'jaxpr',
  'checkpoint': 'jaxpr',
}


def _expanded(x, dimensions):
  shape = list(x.shape)
  for d in sorted(dimensions):
    shape.insert(d, 1)
  return shape


def primitives(jaxpr) -> set[str]:
  """The primitive names a (closed) jaxpr uses, inside its calls too."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  found = set()
  for eqn in jaxpr.eqns:
    name = str(eqn.primitive)
    if name in _CALLS:
      found |= primitives(eqn.params[_CALLS[name]])
    else:
      found.add(name)
  return found


def check(jaxpr) -> None:
  """Raises ``UnsupportedPrimitive`` naming the primitives ``lower`` cannot write."""
  missing = sorted(p for p in primitives(jaxpr) if _RULES.get(p) is None)
  if missing:
    raise UnsupportedPrimitive(f'no TensorFlow lowering for {", ".join(missing)}')


def lower(closed_jaxpr, args: list, matmul_dtype: Any = None) -> list:
  """Evaluates ``closed_jaxpr`` on TensorFlow tensors ``args``, emitting TensorFlow ops
  (inside a ``tf.function`` this builds its graph). Returns the output tensors."""
  tf = _tf()
  ctx = {'matmul_dtype': matmul_dtype or tf.float32}
  return _eval(tf, closed_jaxpr.jaxpr, closed_jaxpr.consts, args, ctx)


def _eval(tf, jaxpr, consts, args, ctx):
  env = {}

  def read(var):
    if hasattr(var, 'val'):  # a literal
      return tf.constant(np.asarray(var.val), _dtype(var.aval.dtype))
    return env[var]

  for var, value in zip(jaxpr.constvars, consts):
    env[var] = tf.constant(np.asarray(value))
  for var, value in zip(jaxpr.invars, args):
    env[var] = value
  for eqn in jaxpr.eqns:
    inputs = [read(v) for v in eqn.invars]
    name = str(eqn.primitive)
    if name in _CALLS:
      body = eqn.params[_CALLS[name]]
      outs = _eval(tf, body.jaxpr, body.consts, inputs, ctx)
    else:
      rule = _RULES.get(name)
      if rule is None:
        raise UnsupportedPrimitive(f'no TensorFlow lowering for {name}')
      params = dict(eqn.params)
      if name in _NEEDS_CONTEXT:
        params['_ctx'] = ctx
      outs = rule(tf, *inputs, **params)
      if not eqn.primitive.multiple_results:
        outs = [outs]
    for var, value in zip(eqn.outvars, outs):
      env[var] = value
  return [read(v) for v in jaxpr.outvars]
