"""Reads a TFLite model file (a FlatBuffer) into plain Python and numpy, with no TensorFlow.

Trained face models ship as `.tflite` files inside the `mediapipe` wheel; `ports.tflite_graph`
runs them in JAX. This module is the file half: a minimal FlatBuffer reader that knows just the
part of the TFLite schema (`tensorflow/compiler/mlir/lite/schema/schema.fbs`) those models use,
the main subgraph's tensors, operators, operator codes and constant buffers.

FlatBuffer layout, as read here: a little-endian byte string whose first uint32 is the offset of
the root table. A table starts with an int32 `soffset` back to its vtable; the vtable holds
uint16 (vtable size, table size, then one offset per field id, 0 = absent). Offsets to tables,
vectors and strings are uint32 relative to where they are stored; a vector is a uint32 length
followed by its elements. Every read is bounds-checked before anything is allocated, so a
damaged or hostile file fails with `TFLiteError` (one line naming the file and what is wrong),
never with an IndexError, a struct error or a huge allocation.
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any, NamedTuple

import numpy as np


class TFLiteError(ValueError):
  """A file that is not a TFLite model this package can read or run; one line naming it."""


_IDENTIFIER = b"TFL3"
_MAX_FILE_BYTES = 1 << 31  # FlatBuffers address 2 GiB; larger models use external buffers
_MAX_RANK = 8
_MAX_TENSOR_ELEMENTS = 1 << 31

# TensorType -> numpy dtype (the types these readers can hold as constants or run).
DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"), 1: np.dtype("<f2"), 2: np.dtype("<i4"), 3: np.dtype("u1"),
    4: np.dtype("<i8"), 6: np.dtype("?"), 7: np.dtype("<i2"), 9: np.dtype("i1"),
    10: np.dtype("<f8"),
}
TYPE_NAMES = ("FLOAT32", "FLOAT16", "INT32", "UINT8", "INT64", "STRING", "BOOL", "INT16",
              "COMPLEX64", "INT8", "FLOAT64")

# BuiltinOperator codes of the ops the runtime knows by name (others are reported by number).
BUILTIN_NAMES: dict[int, str] = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D",
    6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL",
    19: "RELU", 21: "RELU6", 22: "RESHAPE", 23: "RESIZE_BILINEAR", 25: "SOFTMAX", 28: "TANH",
    32: "CUSTOM", 34: "PAD", 39: "TRANSPOSE", 40: "MEAN", 41: "SUB", 42: "DIV", 43: "SQUEEZE",
    45: "STRIDED_SLICE", 54: "PRELU", 55: "MAXIMUM", 57: "MINIMUM", 60: "PADV2",
    67: "TRANSPOSE_CONV", 97: "RESIZE_NEAREST_NEIGHBOR", 98: "LEAKY_RELU", 114: "QUANTIZE",
    117: "HARD_SWISH",
}
_CUSTOM = 32

# BuiltinOptions union type -> the option fields read: (name, field id, struct format, default).
_OPTIONS: dict[int, tuple[tuple[str, int, str, Any], ...]] = {
    1: (("padding", 0, "b", 0), ("stride_w", 1, "i", 0), ("stride_h", 2, "i", 0),
        ("activation", 3, "b", 0), ("dilation_w", 4, "i", 1), ("dilation_h", 5, "i", 1)),
    2: (("padding", 0, "b", 0), ("stride_w", 1, "i", 0), ("stride_h", 2, "i", 0),
        ("depth_multiplier", 3, "i", 0), ("activation", 4, "b", 0), ("dilation_w", 5, "i", 1),
        ("dilation_h", 6, "i", 1)),
    5: (("padding", 0, "b", 0), ("stride_w", 1, "i", 0), ("stride_h", 2, "i", 0),
        ("filter_w", 3, "i", 0), ("filter_h", 4, "i", 0), ("activation", 5, "b", 0)),
    10: (("axis", 0, "i", 0), ("activation", 1, "b", 0)),
    11: (("activation", 0, "b", 0),),  # AddOptions
    15: (("align_corners", 2, "?", False), ("half_pixel_centers", 3, "?", False)),
    21: (("activation", 0, "b", 0),),  # MulOptions
    28: (("activation", 0, "b", 0),),  # SubOptions
    32: (("begin_mask", 0, "i", 0), ("end_mask", 1, "i", 0), ("ellipsis_mask", 2, "i", 0),
         ("new_axis_mask", 3, "i", 0), ("shrink_axis_mask", 4, "i", 0)),
}


class Quantization(NamedTuple):
  """Affine quantisation of a tensor: real = scale * (q - zero_point), per `axis` if given."""

  scale: np.ndarray  # float32 [1] or [channels]
  zero_point: np.ndarray  # int64, same length
  axis: int


class Tensor(NamedTuple):
  """One tensor of the graph: its static shape, type code, constant data (None if computed)."""

  name: str
  shape: tuple[int, ...]
  type: int
  data: np.ndarray | None
  quantization: Quantization | None

  @property
  def type_name(self) -> str:
    return _type_name(self.type)


def _type_name(code: int) -> str:
  return TYPE_NAMES[code] if 0 <= code < len(TYPE_NAMES) else f"type {code}"


class Operator(NamedTuple):
  """One node: its op name (builtin name, or the custom code), tensor indices and options."""

  op: str
  custom: bool
  inputs: tuple[int, ...]  # -1 marks an omitted optional input
  outputs: tuple[int, ...]
  options: dict[str, Any]
  custom_options: bytes


class Model(NamedTuple):
  """The main subgraph of a TFLite model, in execution order."""

  path: str
  version: int
  tensors: tuple[Tensor, ...]
  operators: tuple[Operator, ...]
  inputs: tuple[int, ...]
  outputs: tuple[int, ...]
  description: str


class _Reader:
  """Bounds-checked FlatBuffer primitives over one byte string; errors name the file."""

  def __init__(self, data: bytes, path: str):
    self.data = data
    self.path = path

  def fail(self, what: str) -> TFLiteError:
    return TFLiteError(f"{self.path}: {what}")

  def check(self, pos: int, size: int, what: str) -> None:
    if pos < 0 or size < 0 or pos + size > len(self.data):
      raise self.fail(f"{what} at byte {pos} (+{size}) lies outside the {len(self.data)}-byte "
                      "file (truncated or damaged)")

  def scalar(self, fmt: str, pos: int, what: str) -> Any:
    size = struct.calcsize("<" + fmt)
    self.check(pos, size, what)
    return struct.unpack_from("<" + fmt, self.data, pos)[0]

  def table(self, pos: int, what: str) -> "_Table":
    vtable = pos - self.scalar("i", pos, what)
    vsize = self.scalar("H", vtable, f"vtable of {what}")
    tsize = self.scalar("H", vtable + 2, f"vtable of {what}")
    if vsize < 4 or vsize % 2:
      raise self.fail(f"{what} has a malformed vtable (size {vsize})")
    self.check(vtable, vsize, f"vtable of {what}")
    self.check(pos, max(tsize, 4), what)
    return _Table(self, pos, vtable, vsize, tsize, what)

  def indirect(self, pos: int, what: str) -> int:
    return pos + self.scalar("I", pos, what)

  def vector(self, pos: int, elem: int, what: str) -> tuple[int, int]:
    """(start of elements, length) of the vector whose offset is stored at `pos`."""
    start = self.indirect(pos, what)
    n = self.scalar("I", start, what)
    self.check(start + 4, n * elem, f"{what} ({n} elements)")
    return start + 4, n


class _Table:
  """One table: fields by id, with schema defaults for absent ones."""

  def __init__(self, r: _Reader, pos: int, vtable: int, vsize: int, tsize: int, what: str):
    self.r, self.pos, self.vtable, self.vsize, self.tsize, self.what = (
        r, pos, vtable, vsize, tsize, what)

  def _field(self, fid: int, size: int) -> int | None:
    slot = 4 + 2 * fid
    if slot + 2 > self.vsize:
      return None
    off = self.r.scalar("H", self.vtable + slot, self.what)
    if off == 0:
      return None
    if off + size > self.tsize:
      raise self.r.fail(f"field {fid} of {self.what} overruns its table")
    return self.pos + off

  def scalar(self, fid: int, fmt: str, default: Any) -> Any:
    at = self._field(fid, struct.calcsize("<" + fmt))
    return default if at is None else self.r.scalar(fmt, at, self.what)

  def table(self, fid: int, what: str) -> _Table | None:
    at = self._field(fid, 4)
    return None if at is None else self.r.table(self.r.indirect(at, what), what)

  def vector(self, fid: int, elem: int, what: str) -> tuple[int, int]:
    at = self._field(fid, 4)
    return (0, 0) if at is None else self.r.vector(at, elem, what)

  def array(self, fid: int, dtype: str, what: str) -> np.ndarray:
    dt = np.dtype(dtype)
    start, n = self.vector(fid, dt.itemsize, what)
    return np.frombuffer(self.r.data, dt, n, start) if n else np.zeros(0, dt)

  def bytes(self, fid: int, what: str) -> bytes:
    start, n = self.vector(fid, 1, what)
    return self.r.data[start:start + n]

  def string(self, fid: int, what: str) -> str:
    raw = self.bytes(fid, what)
    try:
      return raw.decode("utf-8")
    except UnicodeDecodeError:
      raise self.r.fail(f"{what} is not valid UTF-8") from None

  def tables(self, fid: int, what: str) -> list[_Table]:
    start, n = self.vector(fid, 4, what)
    return [self.r.table(self.r.indirect(start + 4 * i, what), f"{what}[{i}]") for i in range(n)]


def read(path: str | os.PathLike[str]) -> Model:
  """The main subgraph of the `.tflite` file at `path`. Raises TFLiteError (or OSError)."""
  path = os.fspath(path)
  size = os.path.getsize(path)
  if size > _MAX_FILE_BYTES:
    raise TFLiteError(f"{path}: {size} bytes is more than a FlatBuffer can address (2 GiB)")
  with open(path, "rb") as f:
    data = f.read()
  return parse(data, path)


def parse(data: bytes, path: str = "<bytes>") -> Model:
  """The main subgraph of a TFLite model held in `data`; `path` only names it in errors."""
  r = _Reader(bytes(data), path)
  if len(r.data) < 8:
    raise r.fail(f"{len(r.data)} bytes is too short for a TFLite model")
  if r.data[4:8] != _IDENTIFIER:
    raise r.fail(f"not a TFLite model (file identifier {r.data[4:8]!r}, expected {_IDENTIFIER!r})")
  root = r.table(r.indirect(0, "root offset"), "model")
  version = root.scalar(0, "I", 0)
  if version != 3:
    raise r.fail(f"TFLite schema version {version}, expected 3")
  codes = [_opcode(r, t) for t in root.tables(1, "operator_codes")]
  buffers = root.tables(4, "buffers")
  subgraphs = root.tables(2, "subgraphs")
  if not subgraphs:
    raise r.fail("the model has no subgraph")
  g = subgraphs[0]
  tensors = tuple(_tensor(r, t, i, buffers) for i, t in enumerate(g.tables(0, "tensors")))
  n = len(tensors)
  inputs = _indices(r, g, 1, "subgraph inputs", n)
  outputs = _indices(r, g, 2, "subgraph outputs", n)
  operators = tuple(_operator(r, t, i, codes, n)
                    for i, t in enumerate(g.tables(3, "operators")))
  return Model(path, version, tensors, operators, inputs, outputs, root.string(3, "description"))


def _indices(r: _Reader, t: _Table, fid: int, what: str, n: int, optional: bool = False
             ) -> tuple[int, ...]:
  """A vector of tensor indices, each checked to be < n (or -1 where `optional`)."""
  idx = tuple(int(i) for i in t.array(fid, "<i4", what))
  low = -1 if optional else 0
  bad = [i for i in idx if not low <= i < n]
  if bad:
    raise r.fail(f"{what} name tensor {bad[0]}, but the subgraph has {n} tensors")
  return idx


def _opcode(r: _Reader, t: _Table) -> tuple[str, bool]:
  """(op name, is custom) of an OperatorCode: the larger of the two builtin code fields."""
  code = max(t.scalar(0, "b", 0), t.scalar(3, "i", 0))
  if code == _CUSTOM:
    return t.string(1, "custom_code") or "CUSTOM", True
  return BUILTIN_NAMES.get(code, f"builtin op {code}"), False


def _tensor(r: _Reader, t: _Table, index: int, buffers: list[_Table]) -> Tensor:
  what = f"tensor {index}"
  name = t.string(3, f"{what} name")
  shape = tuple(int(s) for s in t.array(0, "<i4", f"{what} shape"))
  if len(shape) > _MAX_RANK or any(s < 0 for s in shape):
    raise r.fail(f"{what} ({name!r}) has shape {list(shape)}, expected at most {_MAX_RANK} "
                 "non-negative sizes")
  elements = math.prod(shape)
  if elements > _MAX_TENSOR_ELEMENTS:
    raise r.fail(f"{what} ({name!r}) has {elements} elements, more than {_MAX_TENSOR_ELEMENTS}")
  ttype = t.scalar(1, "b", 0)
  buf = t.scalar(2, "I", 0)
  if buf >= max(len(buffers), 1):
    raise r.fail(f"{what} ({name!r}) names buffer {buf}, but the model has {len(buffers)}")
  data = _buffer(r, buffers[buf], buf) if buffers else b""
  array = None
  if data:
    if ttype not in DTYPES:
      raise r.fail(f"{what} ({name!r}) is a constant of type {_type_name(ttype)}, which this "
                   "reader does not hold")
    dt = DTYPES[ttype]
    if len(data) != elements * dt.itemsize:
      raise r.fail(f"{what} ({name!r}) of shape {list(shape)} and type {_type_name(ttype)} needs "
                   f"{elements * dt.itemsize} bytes, its buffer holds {len(data)}")
    array = np.frombuffer(data, dt).reshape(shape)
  quant = t.table(4, f"{what} quantization")
  return Tensor(name, shape, ttype, array, _quantization(r, quant, what) if quant else None)


def _buffer(r: _Reader, t: _Table, index: int) -> bytes:
  """A buffer's bytes: inline data, or `size` bytes at file `offset` (models over 2 GiB)."""
  data = t.bytes(0, f"buffer {index}")
  offset, size = t.scalar(1, "Q", 0), t.scalar(2, "Q", 0)
  if offset > 1:
    r.check(offset, size, f"buffer {index}")
    return r.data[offset:offset + size]
  return data


def _quantization(r: _Reader, t: _Table, what: str) -> Quantization | None:
  scale = t.array(2, "<f4", f"{what} scale")
  zero = t.array(3, "<i8", f"{what} zero_point")
  if not scale.size:
    return None
  if zero.size not in (0, scale.size):
    raise r.fail(f"{what} has {scale.size} scales but {zero.size} zero points")
  zero = zero if zero.size else np.zeros(scale.size, np.int64)
  return Quantization(scale.astype(np.float32), zero.astype(np.int64), t.scalar(6, "i", 0))


def _operator(r: _Reader, t: _Table, index: int, codes: list[tuple[str, bool]], n: int
              ) -> Operator:
  what = f"operator {index}"
  code = t.scalar(0, "I", 0)
  if code >= len(codes):
    raise r.fail(f"{what} uses operator code {code}, but the model has {len(codes)}")
  op, custom = codes[code]
  inputs = _indices(r, t, 1, f"{what} inputs", n, optional=True)
  outputs = _indices(r, t, 2, f"{what} outputs", n)
  options: dict[str, Any] = {}
  kind = t.scalar(3, "B", 0)
  table = t.table(4, f"{what} options") if kind in _OPTIONS else None
  for name, fid, fmt, default in _OPTIONS.get(kind, ()):
    options[name] = default if table is None else table.scalar(fid, fmt, default)
  return Operator(op, custom, inputs, outputs, options, t.bytes(5, f"{what} custom options"))
