"""Reading a TensorFlow Lite model file: its operators in execution order and constant tensors.

A ``.tflite`` file is a flatbuffer (TFLite's ``schema.fbs``), read here with the ``tflite``
package (the schema's generated Python classes, pure Python). Constant weights may be
stored compressed; ``TfliteModel.constant`` undoes the two encodings MediaPipe's face
detectors use, following the tensor back through the operators that produce it:

* ``DEQUANTIZE``: float16 weights -> float32, or int8/uint8 with (per-channel) scale and
  zero point -> ``(q - zero_point) * scale``;
* ``DENSIFY``: sparse weights (TFLite's sparsity format: a traversal order and, per
  traversed dimension, either DENSE with its size or SPARSE_CSR with segment and index
  arrays) -> the dense array. Block-sparse tensors (a block map) are not supported.

Only reading is done here; what the operators mean is the converters' business.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np

# TFLite's enums (schema.fbs), by value.
_PADDING = {0: 'SAME', 1: 'VALID'}
_ACTIVATION = {0: None, 1: 'relu', 2: 'relu_n1_to_1', 3: 'relu6', 4: 'tanh'}
_DIM_DENSE, _DIM_SPARSE_CSR = 0, 1


def _import_tflite():
  try:
    import tflite  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
      'reading .tflite files needs the `tflite` package: `pip install -r requirements-convert.txt`'
    ) from e
  return tflite


@dataclasses.dataclass(frozen=True)
class Operator:
  """One operator of the graph: its builtin name, tensor indices and decoded options."""

  index: int
  kind: str
  inputs: tuple[int, ...]
  outputs: tuple[int, ...]
  options: dict[str, Any]


class TfliteModel:
  """The first subgraph of a ``.tflite`` file: ``ops``, tensor shapes and constants."""

  def __init__(self, path: str | os.PathLike):
    self._tflite = tflite = _import_tflite()
    self.path = pathlib.Path(path)
    self._buf = self.path.read_bytes()
    self._model = tflite.Model.GetRootAsModel(self._buf, 0)
    if self._model.SubgraphsLength() != 1:
      raise ValueError(
        f'{self.path.name}: expected one subgraph, found {self._model.SubgraphsLength()}'
      )
    self._graph = self._model.Subgraphs(0)
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith('_')}
    self.ops: list[Operator] = []
    self._producer: dict[int, Operator] = {}
    for k in range(self._graph.OperatorsLength()):
      op = self._graph.Operators(k)
      code = self._model.OperatorCodes(op.OpcodeIndex())
      # Newer files keep small builtin codes in the deprecated int8 field.
      kind = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), 'CUSTOM')
      record = Operator(
        k,
        kind,
        tuple(int(i) for i in op.InputsAsNumpy()),
        tuple(int(i) for i in op.OutputsAsNumpy()),
        self._options(kind, op),
      )
      self.ops.append(record)
      for out in record.outputs:
        self._producer[out] = record

  @property
  def inputs(self) -> tuple[int, ...]:
    return tuple(int(i) for i in self._graph.InputsAsNumpy())

  @property
  def outputs(self) -> tuple[int, ...]:
    return tuple(int(i) for i in self._graph.OutputsAsNumpy())

  def shape(self, index: int) -> tuple[int, ...]:
    tensor = self._graph.Tensors(index)
    return tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()

  def name(self, index: int) -> str:
    return self._graph.Tensors(index).Name().decode()

  def producer(self, index: int) -> Operator | None:
    return self._producer.get(index)

  def is_constant(self, index: int) -> bool:
    """True for weights: stored in the file, or decoded from stored data by DEQUANTIZE/DENSIFY."""
    op = self._producer.get(index)
    if op is not None:
      return op.kind in ('DEQUANTIZE', 'DENSIFY') and self.is_constant(op.inputs[0])
    return self._raw(index) is not None

  def constant(self, index: int) -> np.ndarray:
    """The value of a constant tensor, decoded through DEQUANTIZE and DENSIFY producers."""
    op = self._producer.get(index)
    if op is not None:
      if op.kind == 'DEQUANTIZE':
        return self._dequantize(op.inputs[0], self.constant(op.inputs[0]))
      if op.kind == 'DENSIFY':
        return self._densify(op.inputs[0])
      raise ValueError(
        f'tensor {index} ({self.name(index)}) is computed by {op.kind}, not a constant'
      )
    raw = self._raw(index)
    if raw is None:
      raise ValueError(f'tensor {index} ({self.name(index)}) holds no data')
    if self._graph.Tensors(index).Sparsity() is not None:
      return self._densify(index)
    return raw.reshape(self.shape(index))

  # -- decoding

  def _dtype(self, index: int) -> np.dtype:
    types = self._tflite.TensorType
    table = {
      types.FLOAT32: np.float32,
      types.FLOAT16: np.float16,
      types.INT32: np.int32,
      types.INT8: np.int8,
      types.UINT8: np.uint8,
      types.INT64: np.int64,
      types.INT16: np.int16,
    }
    kind = self._graph.Tensors(index).Type()
    if kind not in table:
      raise ValueError(f'tensor {index} ({self.name(index)}): unsupported type {kind}')
    return np.dtype(table[kind])

  def _raw(self, index: int) -> np.ndarray | None:
    """The tensor's stored bytes as a flat array of its type, or None when it has none."""
    buffer = self._model.Buffers(self._graph.Tensors(index).Buffer())
    if buffer.Offset():  # large models keep data outside the flatbuffer
      return np.frombuffer(
        self._buf, self._dtype(index), buffer.Size() // self._dtype(index).itemsize, buffer.Offset()
      ).copy()
    if not buffer.DataLength():
      return None
    return np.frombuffer(buffer.DataAsNumpy().tobytes(), self._dtype(index))

  def _dequantize(self, index: int, value: np.ndarray) -> np.ndarray:
    if value.dtype == np.float16:
      return value.astype(np.float32)
    quant = self._graph.Tensors(index).Quantization()
    if quant is None or not quant.ScaleLength():
      raise ValueError(f'tensor {index} ({self.name(index)}): integer weights without scales')
    scale = quant.ScaleAsNumpy().astype(np.float32)
    zero = quant.ZeroPointAsNumpy().astype(np.float32)
    shape = [1] * value.ndim
    if scale.size > 1:  # per-channel along the quantized dimension
      shape[quant.QuantizedDimension()] = scale.size
    return (value.astype(np.float32) - zero.reshape(shape)) * scale.reshape(shape)

  def _densify(self, index: int) -> np.ndarray:
    """TFLite's sparse tensor format -> dense array (traversal order, DENSE/CSR dims)."""
    tensor = self._graph.Tensors(index)
    sparsity = tensor.Sparsity()
    shape = self.shape(index)
    if sparsity.BlockMapLength():
      raise NotImplementedError(f'tensor {index} ({self.name(index)}) is block-sparse')
    order = [int(d) for d in sparsity.TraversalOrderAsNumpy()]
    values = self._raw(index)
    # Walk the traversed dimensions breadth-first: ``pos`` indexes the next level's storage
    # (dense: parent * size + i; CSR: the parent's segment), ``coords`` the dense position.
    pos = np.zeros(1, np.int64)
    coords = np.zeros((1, 0), np.int64)
    for level in range(sparsity.DimMetadataLength()):
      dim = sparsity.DimMetadata(level)
      if dim.Format() == _DIM_DENSE:
        size = dim.DenseSize()
        child = np.arange(size)
        pos = (pos[:, None] * size + child[None]).ravel()
        coords = np.concatenate(
          [np.repeat(coords, size, axis=0), np.tile(child, len(coords))[:, None]], axis=1
        )
      elif dim.Format() == _DIM_SPARSE_CSR:
        segments = self._index_vector(dim.ArraySegments(), dim.ArraySegmentsType())
        indices = self._index_vector(dim.ArrayIndices(), dim.ArrayIndicesType())
        counts = segments[pos + 1] - segments[pos]
        starts = np.repeat(segments[pos], counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        pos = starts + within
        coords = np.concatenate([np.repeat(coords, counts, axis=0), indices[pos][:, None]], axis=1)
      else:
        raise ValueError(f'tensor {index}: unknown dimension format {dim.Format()}')
    if len(order) != len(shape) or len(pos) != len(values):
      raise ValueError(
        f'tensor {index} ({self.name(index)}): sparse metadata does not fit '
        f'its {len(values)} values of shape {shape}'
      )
    dense = np.zeros(shape, values.dtype)
    dense[tuple(coords[:, order.index(d)] for d in range(len(shape)))] = values
    return dense

  def _index_vector(self, table, kind: int) -> np.ndarray:
    tflite = self._tflite
    vector = {
      tflite.SparseIndexVector.Int32Vector: tflite.Int32Vector,
      tflite.SparseIndexVector.Uint16Vector: tflite.Uint16Vector,
      tflite.SparseIndexVector.Uint8Vector: tflite.Uint8Vector,
    }[kind]()
    vector.Init(table.Bytes, table.Pos)
    return vector.ValuesAsNumpy().astype(np.int64)

  def _options(self, kind: str, op) -> dict[str, Any]:
    tflite = self._tflite
    readers = {
      'CONV_2D': tflite.Conv2DOptions,
      'DEPTHWISE_CONV_2D': tflite.DepthwiseConv2DOptions,
      'MAX_POOL_2D': tflite.Pool2DOptions,
      'AVERAGE_POOL_2D': tflite.Pool2DOptions,
      'ADD': tflite.AddOptions,
      'RESIZE_BILINEAR': tflite.ResizeBilinearOptions,
      'DEPTH_TO_SPACE': tflite.DepthToSpaceOptions,
      'CONCATENATION': tflite.ConcatenationOptions,
    }
    if kind not in readers or op.BuiltinOptions() is None:
      return {}
    table = op.BuiltinOptions()
    opts = readers[kind]()
    opts.Init(table.Bytes, table.Pos)
    if kind in ('CONV_2D', 'DEPTHWISE_CONV_2D'):
      return {
        'strides': (opts.StrideH(), opts.StrideW()),
        'padding': _PADDING[opts.Padding()],
        'activation': _ACTIVATION[opts.FusedActivationFunction()],
        'dilation': (opts.DilationHFactor(), opts.DilationWFactor()),
      }
    if kind in ('MAX_POOL_2D', 'AVERAGE_POOL_2D'):
      return {
        'strides': (opts.StrideH(), opts.StrideW()),
        'padding': _PADDING[opts.Padding()],
        'window': (opts.FilterHeight(), opts.FilterWidth()),
        'activation': _ACTIVATION[opts.FusedActivationFunction()],
      }
    if kind in ('ADD', 'CONCATENATION'):
      extra = {'axis': opts.Axis()} if kind == 'CONCATENATION' else {}
      return {'activation': _ACTIVATION[opts.FusedActivationFunction()], **extra}
    if kind == 'RESIZE_BILINEAR':
      return {
        'align_corners': bool(opts.AlignCorners()),
        'half_pixel_centers': bool(opts.HalfPixelCenters()),
      }
    return {'block_size': opts.BlockSize()}
