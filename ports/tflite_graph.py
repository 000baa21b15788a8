"""A TFLite model as a pure, jittable JAX function with its weights as a pytree.

`load(path)` reads a `.tflite` file (`ports.tflite_format`), folds the dequantisation of constant
weights (float16, or int8/uint8 with scales and zero points) into float32 params, and returns
`TFLiteModel(apply_fn, params, ...)`: `apply_fn(params, *inputs) -> tuple of outputs`, each input
a float32 batch `[B, *shape[1:]]` of the model's declared input shape, each output likewise
`[B, *shape[1:]]`. The graph itself is written for the file's batch of 1 and `vmap`ped over B, so
reshapes and slices keep their declared shapes. Integer constants (paddings, shapes, sizes) stay
static numpy; float constants are params, so gradients flow to them and through them.

Loading traces the graph once (`jax.eval_shape`), so every unsupported op (all of them, named in
one line), unsupported option or shape mismatch is a `TFLiteError` at load, not mid-run.
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ports import tflite_ops
from ports.tflite_format import DTYPES, Model, Operator, Tensor, TFLiteError, read

SUPPORTED_OPS = tuple(sorted(tflite_ops.OPS)) + ("DEQUANTIZE",)
_FLOAT_TYPES = (0, 1, 10)  # FLOAT32, FLOAT16, FLOAT64


class TFLiteModel(NamedTuple):
  """A runnable TFLite graph: `apply_fn(params, *inputs) -> tuple of outputs` (batched)."""

  apply_fn: Callable[..., tuple[jax.Array, ...]]
  params: dict[str, jax.Array]
  input_names: tuple[str, ...]
  input_shapes: tuple[tuple[int, ...], ...]  # per example (the file's shape without batch)
  output_names: tuple[str, ...]
  output_shapes: tuple[tuple[int, ...], ...]


def _dequantize(t: Tensor, path: str) -> np.ndarray:
  """A constant tensor's real values as float32."""
  data = t.data
  if t.type in _FLOAT_TYPES:
    return data.astype(np.float32)
  q = t.quantization
  if q is None:
    raise TFLiteError(f"{path}: DEQUANTIZE of tensor {t.name!r} ({t.type_name}) without "
                      "quantisation parameters")
  shape = [1] * data.ndim
  if q.scale.size > 1:
    if not 0 <= q.axis < data.ndim or data.shape[q.axis] != q.scale.size:
      raise TFLiteError(f"{path}: tensor {t.name!r} has {q.scale.size} scales for axis {q.axis} "
                        f"of shape {list(data.shape)}")
    shape[q.axis] = q.scale.size
  scale, zero = q.scale.reshape(shape), q.zero_point.reshape(shape)
  return ((data.astype(np.int64) - zero) * scale).astype(np.float32)


def _param_keys(model: Model, indices: Sequence[int]) -> dict[int, str]:
  """Param key of each float constant: its tensor name, made unique with `#index` if needed."""
  names = [model.tensors[i].name for i in indices]
  return {i: n if names.count(n) == 1 else f"{n}#{i}" for i, n in zip(indices, names)}


def compile_model(model: Model) -> TFLiteModel:
  """The runnable form of a parsed model. Raises TFLiteError naming what is not supported."""
  path, tensors = model.path, model.tensors
  unsupported = sorted({op.op for op in model.operators
                        if op.op not in tflite_ops.OPS and op.op != "DEQUANTIZE"})
  if unsupported:
    raise TFLiteError(f"{path}: unsupported op(s) {', '.join(unsupported)}; supported ops: "
                      f"{', '.join(SUPPORTED_OPS)}")
  # Constants: float ones (and constant DEQUANTIZE results) become params, the rest stay static.
  folded: dict[int, np.ndarray] = {}
  static: dict[int, np.ndarray] = {}
  for i, t in enumerate(tensors):
    if t.data is None:
      continue
    if t.type in _FLOAT_TYPES:
      folded[i] = t.data.astype(np.float32)
    else:
      static[i] = t.data
  ops: list[Operator] = []
  for op in model.operators:
    if op.op == "DEQUANTIZE" and len(op.inputs) == 1 and tensors[op.inputs[0]].data is not None:
      (src,), (dst,) = op.inputs, op.outputs
      folded[dst] = _dequantize(tensors[src], path)
    else:
      ops.append(op)
  used = {i for op in ops for i in op.inputs} | set(model.outputs)
  keys = _param_keys(model, [i for i in folded if i in used])
  params = {keys[i]: jnp.asarray(folded[i]) for i in keys}
  for i in model.inputs:
    if tensors[i].type != 0 or not tensors[i].shape or tensors[i].shape[0] != 1:
      raise TFLiteError(f"{path}: input {tensors[i].name!r} is {tensors[i].type_name} of shape "
                        f"{list(tensors[i].shape)}; only float32 inputs of batch 1 are supported")
  _check_order(model, ops, set(folded) | set(static))

  def run_one(params: dict[str, jax.Array], *inputs: jax.Array) -> tuple[jax.Array, ...]:
    env: dict[int, Any] = {i: static[i] for i in static}
    env.update({i: params[k] for i, k in keys.items()})
    env.update({i: x[None] for i, x in zip(model.inputs, inputs)})
    for op in ops:
      args = [None if i < 0 else env[i] for i in op.inputs]
      if op.op == "DEQUANTIZE":
        outs = [_dequantize_value(op, args[0], tensors[op.inputs[0]], path)]
      else:
        outs = tflite_ops.OPS[op.op](op, args, [tensors[o].shape for o in op.outputs])
      for o, v in zip(op.outputs, outs):
        env[o] = v
    return tuple(jnp.asarray(env[o])[0] for o in model.outputs)

  in_shapes = tuple(tensors[i].shape[1:] for i in model.inputs)
  out_shapes = tuple(tensors[o].shape[1:] for o in model.outputs)

  def apply_fn(params: dict[str, jax.Array], *inputs: Any) -> tuple[jax.Array, ...]:
    if len(inputs) != len(in_shapes):
      raise TFLiteError(f"{path}: {len(inputs)} inputs given, the model takes {len(in_shapes)}")
    xs = []
    for i, x, shape in zip(model.inputs, inputs, in_shapes):
      x = jnp.asarray(x)
      x = x if x.dtype in (jnp.float32, jnp.float64) else x.astype(jnp.float32)
      if x.shape[1:] != shape or x.ndim != len(shape) + 1:
        raise TFLiteError(f"{path}: input {tensors[i].name!r} has shape {list(x.shape)}, "
                          f"expected [B, {', '.join(map(str, shape))}]")
      xs.append(x)
    return jax.vmap(run_one, in_axes=(None,) + (0,) * len(xs))(params, *xs)

  _check_trace(path, run_one, params, model, in_shapes, out_shapes)
  return TFLiteModel(apply_fn, params, tuple(tensors[i].name for i in model.inputs), in_shapes,
                     tuple(tensors[o].name for o in model.outputs), out_shapes)


def _dequantize_value(op: Operator, x: jax.Array, t: Tensor, path: str) -> jax.Array:
  """DEQUANTIZE of a computed tensor (float16 only; quantised activations are not supported)."""
  if t.type in _FLOAT_TYPES:
    return jnp.asarray(x, jnp.float32)
  raise TFLiteError(f"{path}: DEQUANTIZE of the computed {t.type_name} tensor {t.name!r} is not "
                    "supported (quantised activations)")


def _check_order(model: Model, ops: Sequence[Operator], constants: set[int]) -> None:
  """Every operator input is a constant, a model input or an earlier operator's output."""
  ready = set(constants) | set(model.inputs)
  for n, op in enumerate(ops):
    for i in op.inputs:
      if i >= 0 and i not in ready:
        raise TFLiteError(f"{model.path}: {op.op} (operator {n}) reads tensor {i} "
                          f"({model.tensors[i].name!r}) before anything writes it")
    ready.update(op.outputs)
  missing = [model.tensors[o].name for o in model.outputs if o not in ready]
  if missing:
    raise TFLiteError(f"{model.path}: output(s) {', '.join(map(repr, missing))} are never written")


def _check_trace(path: str, run_one: Callable[..., Any], params: dict[str, jax.Array],
                 model: Model, in_shapes: Sequence[tuple[int, ...]],
                 out_shapes: Sequence[tuple[int, ...]]) -> None:
  """Traces the graph abstractly; op errors and output shapes unlike the file's are TFLiteError."""
  specs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in in_shapes]
  try:
    outs = jax.eval_shape(run_one, params, *specs)
  except TFLiteError as e:
    raise TFLiteError(f"{path}: {e}") from None
  except (TypeError, ValueError, IndexError) as e:  # shapes that do not fit the ops
    raise TFLiteError(f"{path}: the graph does not trace: {type(e).__name__}: "
                      f"{str(e).splitlines()[0]}") from None
  for o, got, want in zip(model.outputs, outs, out_shapes):
    if tuple(got.shape) != tuple(want):
      raise TFLiteError(f"{path}: output {model.tensors[o].name!r} comes out {list(got.shape)}, "
                        f"the file declares {list(want)}")


def load(path: str | os.PathLike[str]) -> TFLiteModel:
  """The `.tflite` model at `path` as a `TFLiteModel`. Raises TFLiteError or OSError."""
  return compile_model(read(path))


__all__ = ["DTYPES", "SUPPORTED_OPS", "TFLiteError", "TFLiteModel", "compile_model", "load"]
