"""TFLite operators as JAX functions, with TFLite's own padding, pooling and resize rules.

`ports.tflite_graph` walks a model's operators and calls the function registered here under each
op's name. Each function takes the operator (for its options), its input values (jax arrays for
computed and float constant tensors, numpy arrays for integer constants such as shapes and
paddings, which must be static) and the declared output shapes, and returns the outputs. Shapes
follow the file (batch 1; `tflite_graph` vmaps over the real batch). Anything an op cannot do
faithfully raises `TFLiteError` at trace time, which `tflite_graph.compile` turns into a load-time
error.

Semantics follow the TFLite reference kernels: SAME padding puts the smaller half before
(`total // 2`); average pooling divides by the number of in-image taps; bilinear resize supports
the legacy, `align_corners` and `half_pixel_centers` sampling grids; PRELU is
`x if x >= 0 else alpha * x`; HARD_SWISH is `x * relu6(x + 3) / 6`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ports.tflite_format import Operator, TFLiteError

Value = Any  # jax.Array or a static numpy array
OpFn = Callable[[Operator, Sequence[Value], Sequence[tuple[int, ...]]], list[Value]]

_SAME, _VALID = 0, 1
_HIGHEST = jax.lax.Precision.HIGHEST


def _activation(x: jax.Array, code: int, op: Operator) -> jax.Array:
  """A fused activation (ActivationFunctionType)."""
  if code == 0:
    return x
  if code == 1:
    return jnp.maximum(x, 0.0)
  if code == 2:
    return jnp.clip(x, -1.0, 1.0)
  if code == 3:
    return jnp.clip(x, 0.0, 6.0)
  if code == 4:
    return jnp.tanh(x)
  raise TFLiteError(f"{op.op} has fused activation {code}, which is not supported (supported: "
                    "NONE, RELU, RELU_N1_TO_1, RELU6, TANH)")


def _static(value: Value, what: str, op: Operator) -> np.ndarray:
  """An integer constant as numpy; a computed tensor here cannot be traced to a static shape."""
  if not isinstance(value, np.ndarray):
    raise TFLiteError(f"{op.op}: its {what} is computed at run time; only constant {what}s are "
                      "supported")
  return value


def _padding(size: int, k: int, stride: int, dilation: int, mode: int, op: Operator
             ) -> tuple[int, int]:
  """(before, after) padding of one spatial axis for SAME or VALID, TFLite's rule."""
  eff = (k - 1) * dilation + 1
  if mode == _VALID:
    return 0, 0
  if mode != _SAME:
    raise TFLiteError(f"{op.op} has padding mode {mode}, expected SAME (0) or VALID (1)")
  out = -(-size // stride)
  total = max((out - 1) * stride + eff - size, 0)
  return total // 2, total - total // 2


def _pads(x: jax.Array, kh: int, kw: int, o: dict[str, Any], op: Operator,
          dilation: tuple[int, int] = (1, 1)) -> list[tuple[int, int]]:
  return [_padding(x.shape[1], kh, o["stride_h"], dilation[0], o["padding"], op),
          _padding(x.shape[2], kw, o["stride_w"], dilation[1], o["padding"], op)]


def _bias(y: jax.Array, args: Sequence[Value]) -> jax.Array:
  if len(args) > 2 and args[2] is not None:
    y = y + jnp.asarray(args[2], y.dtype)
  return y


def _strides(o: dict[str, Any], op: Operator) -> tuple[int, int]:
  if o["stride_h"] < 1 or o["stride_w"] < 1:
    raise TFLiteError(f"{op.op} has strides {o['stride_h']}x{o['stride_w']}, expected >= 1")
  return o["stride_h"], o["stride_w"]


def _conv(op: Operator, args: Sequence[Value], hwio: jax.Array, groups: int) -> list[Value]:
  """The convolution both conv ops run: `hwio` filter, the op's strides, padding, dilation,
  bias and fused activation."""
  x, o = args[0], op.options
  dil = (o["dilation_h"], o["dilation_w"])
  kh, kw = hwio.shape[:2]
  y = jax.lax.conv_general_dilated(
      x, hwio, _strides(o, op), _pads(x, kh, kw, o, op, dil), rhs_dilation=dil,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
      precision=_HIGHEST)
  return [_activation(_bias(y, args), o["activation"], op)]


def conv_2d(op: Operator, args: Sequence[Value], _: Sequence[tuple[int, ...]]) -> list[Value]:
  """CONV_2D: filter `[out, kh, kw, in]`, optional bias, fused activation."""
  x, w = args[0], jnp.asarray(args[1])
  cin = w.shape[3]
  if not cin or x.shape[-1] % cin:
    raise TFLiteError(f"CONV_2D: input has {x.shape[-1]} channels, filter takes {cin}")
  return _conv(op, args, jnp.transpose(w, (1, 2, 3, 0)), x.shape[-1] // cin)


def depthwise_conv_2d(op: Operator, args: Sequence[Value], _: Sequence[tuple[int, ...]]
                      ) -> list[Value]:
  """DEPTHWISE_CONV_2D: filter `[1, kh, kw, in * multiplier]`; output c*m+j reads input c."""
  x, w = args[0], jnp.asarray(args[1])
  cout, cin = w.shape[3], x.shape[-1]
  if cout % cin:
    raise TFLiteError(f"DEPTHWISE_CONV_2D: {cout} filter channels for {cin} input channels")
  return _conv(op, args, jnp.transpose(w, (1, 2, 0, 3)), cin)


def transpose_conv_bias(op: Operator, args: Sequence[Value], out_shapes: Sequence[tuple[int, ...]]
                        ) -> list[Value]:
  """MediaPipe's custom `Convolution2DTransposeBias`: weights `[out, kh, kw, in]`, bias `[out]`;
  options are three little-endian int32 (padding: 1 SAME / 2 VALID, stride_w, stride_h)."""
  raw = op.custom_options
  if len(raw) < 12:
    raise TFLiteError(f"{op.op}: {len(raw)} bytes of options, expected 12 (padding, strides)")
  mode, sw, sh = (int(v) for v in np.frombuffer(raw[:12], "<i4"))
  if mode not in (1, 2) or sw < 1 or sh < 1:
    raise TFLiteError(f"{op.op}: padding {mode} and strides {sh}x{sw} are not supported "
                      "(padding 1 SAME or 2 VALID, strides >= 1)")
  x, w = args[0], jnp.asarray(args[1])
  _, kh, kw, _ = w.shape
  out_h, out_w = out_shapes[0][1], out_shapes[0][2]
  pads = []
  for size, out, k, s in ((x.shape[1], out_h, kh, sh), (x.shape[2], out_w, kw, sw)):
    before = max((size - 1) * s + k - out, 0) // 2 if mode == 1 else 0
    lo = k - 1 - before
    pads.append((lo, out + k - 2 - (size - 1) * s - lo))
  kernel = jnp.transpose(w, (1, 2, 3, 0))[::-1, ::-1]
  y = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), pads, lhs_dilation=(sh, sw),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HIGHEST)
  return [_bias(y, args)]


def _pool(op: Operator, x: jax.Array, reducer: str) -> jax.Array:
  o = op.options
  kh, kw = o["filter_h"], o["filter_w"]
  if kh < 1 or kw < 1:
    raise TFLiteError(f"{op.op} has a {kh}x{kw} window, expected >= 1")
  window, strides = (1, kh, kw, 1), (1, *_strides(o, op), 1)
  pads = [(0, 0), *_pads(x, kh, kw, o, op), (0, 0)]
  if reducer == "max":
    y = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pads)
  else:
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pads)
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pads)
    y = total / count
  return _activation(y, o["activation"], op)


def max_pool_2d(op: Operator, args: Sequence[Value], _: Sequence[tuple[int, ...]]
                ) -> list[Value]:
  return [_pool(op, args[0], "max")]


def average_pool_2d(op: Operator, args: Sequence[Value], _: Sequence[tuple[int, ...]]
                    ) -> list[Value]:
  return [_pool(op, args[0], "mean")]


def _binary(fn: Callable[[jax.Array, jax.Array], jax.Array]) -> OpFn:
  def run(op: Operator, args: Sequence[Value], _: Sequence[tuple[int, ...]]) -> list[Value]:
    a, b = jnp.asarray(args[0]), jnp.asarray(args[1])
    return [_activation(fn(a, b), op.options.get("activation", 0), op)]
  return run


def _unary(fn: Callable[[jax.Array], jax.Array]) -> OpFn:
  def run(op: Operator, args: Sequence[Value], _: Sequence[tuple[int, ...]]) -> list[Value]:
    return [fn(jnp.asarray(args[0]))]
  return run


def prelu(op: Operator, args: Sequence[Value], _: Sequence[tuple[int, ...]]) -> list[Value]:
  x, alpha = args[0], jnp.asarray(args[1])
  return [jnp.where(x >= 0, x, alpha * x)]


def pad(op: Operator, args: Sequence[Value], _: Sequence[tuple[int, ...]]) -> list[Value]:
  """PAD / PADV2: paddings `[rank, 2]` (constant), zeros or the given constant value."""
  x = args[0]
  widths = _static(args[1], "paddings", op).astype(np.int64)
  if widths.shape != (x.ndim, 2) or (widths < 0).any():
    raise TFLiteError(f"{op.op}: paddings of shape {list(widths.shape)} for a rank-{x.ndim} "
                      "input, expected non-negative [rank, 2]")
  value = jnp.asarray(args[2], x.dtype).reshape(()) if len(args) > 2 else 0.0
  return [jnp.pad(x, [tuple(int(v) for v in w) for w in widths], constant_values=value)]


def reshape(op: Operator, args: Sequence[Value], out_shapes: Sequence[tuple[int, ...]]
            ) -> list[Value]:
  """RESHAPE to the declared output shape (the shape input, where given, must agree)."""
  x, shape = args[0], tuple(out_shapes[0])
  if math.prod(shape) != x.size:
    raise TFLiteError(f"RESHAPE of {list(x.shape)} to {list(shape)}: sizes differ")
  return [jnp.reshape(x, shape)]


def concatenation(op: Operator, args: Sequence[Value], _: Sequence[tuple[int, ...]]
                  ) -> list[Value]:
  axis = op.options["axis"]
  y = jnp.concatenate([jnp.asarray(a) for a in args], axis=axis)
  return [_activation(y, op.options["activation"], op)]


def _resize_axis(x: jax.Array, axis: int, out: int, align: bool, half: bool) -> jax.Array:
  """Linear interpolation along `axis` at TFLite's sampling grid (static indices, weights)."""
  size = x.shape[axis]
  scale = (size - 1) / (out - 1) if align and out > 1 else size / out
  pos = (np.arange(out) + 0.5) * scale - 0.5 if half else np.arange(out) * scale
  floor = np.floor(pos)
  lo = np.clip(floor, 0, size - 1).astype(np.int32)
  hi = np.clip(np.ceil(pos) if half else floor + 1, 0, size - 1).astype(np.int32)
  frac = (pos - floor).astype(np.float32)
  shape = [1] * x.ndim
  shape[axis] = out
  frac = jnp.asarray(frac.reshape(shape), x.dtype)
  a, b = jnp.take(x, lo, axis=axis), jnp.take(x, hi, axis=axis)
  return a + (b - a) * frac


def resize_bilinear(op: Operator, args: Sequence[Value], _: Sequence[tuple[int, ...]]
                    ) -> list[Value]:
  x = args[0]
  size = _static(args[1], "size", op).reshape(-1)
  if size.shape != (2,) or (size < 1).any():
    raise TFLiteError(f"RESIZE_BILINEAR: size {size.tolist()}, expected two positive numbers")
  align, half = op.options["align_corners"], op.options["half_pixel_centers"]
  y = _resize_axis(x, 1, int(size[0]), align, half)
  return [_resize_axis(y, 2, int(size[1]), align, half)]


def strided_slice(op: Operator, args: Sequence[Value], out_shapes: Sequence[tuple[int, ...]]
                  ) -> list[Value]:
  """STRIDED_SLICE with constant begin, end, strides and begin/end/shrink masks."""
  o = op.options
  if o["ellipsis_mask"] or o["new_axis_mask"]:
    raise TFLiteError("STRIDED_SLICE with ellipsis or new-axis masks is not supported")
  x = args[0]
  begin, end, strides = (_static(a, n, op).reshape(-1) for a, n in
                         zip(args[1:4], ("begin", "end", "strides")))
  index = []
  for d in range(x.ndim):
    if d >= len(begin):
      index.append(slice(None))
      continue
    b = None if o["begin_mask"] >> d & 1 else int(begin[d])
    e = None if o["end_mask"] >> d & 1 else int(end[d])
    if o["shrink_axis_mask"] >> d & 1:
      index.append(int(begin[d]))
    else:
      index.append(slice(b, e, int(strides[d])))
  return [jnp.reshape(x[tuple(index)], out_shapes[0])]


OPS: dict[str, OpFn] = {
    "ADD": _binary(jnp.add),
    "SUB": _binary(jnp.subtract),
    "MUL": _binary(jnp.multiply),
    "MAXIMUM": _binary(jnp.maximum),
    "MINIMUM": _binary(jnp.minimum),
    "CONV_2D": conv_2d,
    "DEPTHWISE_CONV_2D": depthwise_conv_2d,
    "Convolution2DTransposeBias": transpose_conv_bias,
    "MAX_POOL_2D": max_pool_2d,
    "AVERAGE_POOL_2D": average_pool_2d,
    "PRELU": prelu,
    "PAD": pad,
    "PADV2": pad,
    "RESHAPE": reshape,
    "CONCATENATION": concatenation,
    "RESIZE_BILINEAR": resize_bilinear,
    "STRIDED_SLICE": strided_slice,
    "LOGISTIC": _unary(jax.nn.sigmoid),
    "RELU": _unary(lambda x: jnp.maximum(x, 0.0)),
    "RELU6": _unary(lambda x: jnp.clip(x, 0.0, 6.0)),
    "TANH": _unary(jnp.tanh),
    "HARD_SWISH": _unary(lambda x: x * jnp.clip(x + 3.0, 0.0, 6.0) / 6.0),
}
