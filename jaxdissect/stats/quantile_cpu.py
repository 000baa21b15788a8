"""The quantile sketch's two heavy steps as numpy code, run in place on XLA's CPU buffers.

On the CPU backend, turning a raw block into level items and compacting a level are numpy code
called through `buffer_callback` on XLA's own buffers, the level array `[J, U, 2k]` aliased to
the output (no copy at all; `pure_callback` would copy operands and results, which costs as much
as the sort). They work through the units in cache-sized pieces (transpose, keys, sort, pick)
with one thread per core: numpy's SIMD sort is about 7x faster than XLA's CPU sort. They write
exactly the entries the jnp kernels (`quantile_jnp`) write, so both give bit-identical states;
`jaxdissect.stats.quantile` picks one per backend.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.stats.backend import buffer_callback, over_units
from jaxdissect.stats.quantile_keys import EMPTY, KEY_NEG_INF, KEY_POS_INF, LOWEST

_CHUNK = 64  # units per piece of numpy work (fewer, larger numpy calls: the GIL is shared)
_TILE = 4096  # rows per transposing copy (one call per piece at the default block size)
_QUAD = np.dtype((np.void, 16))  # four float32 moved as one opaque 16-byte element


def _in_parallel(fn: Callable[[slice], None], num_units: int) -> None:
  """Runs `fn` on slices of whole `_CHUNK`s of units, one per CPU core (`over_units`)."""
  over_units(fn, num_units, parallel=num_units >= 64, align=_CHUNK)


def _lead(out: np.ndarray, *args) -> tuple[tuple[int, ...], list[np.ndarray]]:
  """Leading (vmapped) shape of `out` and the `(array, trailing ndim)` args broadcast to it."""
  lead = out.shape[:out.ndim - 3]
  return lead, [np.broadcast_to(np.asarray(a), lead + np.shape(a)[np.ndim(a) - nd:])
                for a, nd in args]


def _to_keys_inplace(x: np.ndarray) -> None:
  """float32 bits (viewed as int32) -> order-preserving keys, as `to_key`."""
  sign = np.right_shift(x, 31)
  np.bitwise_and(sign, 0x7FFFFFFF, out=sign)
  np.bitwise_xor(x, sign, out=x)


def _transpose_keys(block: np.ndarray, out: np.ndarray) -> None:
  """Writes the keys of float32 `block` `[b, u]` to `out` `[u, b]`, in cache-sized tiles.

  numpy's transposing copy moves one element per strided load, so when the layout allows, four
  neighbouring units travel together as one 16-byte element and are split apart afterwards in
  cache: about twice as fast as moving single floats.
  """
  b, u = block.shape
  if u % 4 == 0 and block.strides[1] == 4 and block.strides[0] % 16 == 0 and (
      block.ctypes.data % 16 == 0):
    wide = block.view(_QUAD)
    quads = np.empty((u // 4, b), _QUAD)
    for lo in range(0, b, _TILE):
      quads[:, lo:lo + _TILE] = wide[lo:lo + _TILE].T
    split = quads.view(np.float32).reshape(u // 4, b, 4).transpose(0, 2, 1)
    out.view(np.float32).reshape(u // 4, 4, b)[...] = split
  else:
    bits = out.view(np.float32)
    for lo in range(0, b, _TILE):
      bits[:, lo:lo + _TILE] = block[lo:lo + _TILE].T
  _to_keys_inplace(out)


def _mask_nonfinite(x: np.ndarray, rows: np.ndarray) -> None:
  """Replaces the keys of non-finite values in `x[rows]` by `EMPTY` (rare: callers check the
  extremes first)."""
  sub = x[rows]
  sub[(sub <= KEY_NEG_INF) | (sub >= KEY_POS_INF)] = EMPTY
  x[rows] = sub


def _pick(ordered: np.ndarray, offset: np.ndarray, stride: int, out: np.ndarray) -> None:
  """`out[u, i] = ordered[u, offset[u] + stride * i]` for the leading `width // stride` slots
  (one flat gather: `take_along_axis` on the `[u, groups, stride]` view is about 2x slower)."""
  rows, width = ordered.shape
  start = np.arange(rows, dtype=np.intp) * width + offset
  index = start[:, None] + np.arange(0, width, stride, dtype=np.intp)[None, :]
  out[:, :width // stride] = ordered.reshape(-1)[index]


def _numpy_thin(rows: np.ndarray, n: int, offset: np.ndarray, stride: int, out: np.ndarray):
  """`out[u, i]` = `sorted(rows[u, :n])[offset[u] + stride * i]` (`EMPTY` past `n`) for the
  `ceil(n / stride)` leading slots of `out`; later slots are left alone."""
  groups = -(-n // stride)
  if groups == 0:
    return
  buf = np.empty((min(_CHUNK, rows.shape[0]), groups * stride), np.int32)
  buf[:, n:] = EMPTY
  for lo in range(0, rows.shape[0], _CHUNK):
    hi = min(lo + _CHUNK, rows.shape[0])
    ordered = buf[:hi - lo]
    ordered[:, :n] = rows[lo:hi, :n]
    ordered.sort(axis=-1)
    _pick(ordered, offset[lo:hi], stride, out[lo:hi])


def _numpy_ingest(block, keys, slot, at, stride, offset, stats):
  """Level-0 items of raw `block` `[b, U']` into `keys[slot, :, at:]`, and per unit the finite
  count, smallest key and largest key (`EMPTY` / int32 min if none) into `stats` `[3, U']`.

  Works through the units in cache-sized pieces: transpose to keys, then (with `stride` > 1)
  sort and pick every `stride`-th, all while the piece is in cache. Non-finite values become
  `EMPTY` (a hole); they are found from each unit's extremes, so clean data pays no extra pass.
  """
  b, units = block.shape
  if stride > 1:  # a sort buffer, padded with holes to whole strides
    buf = np.empty((min(_CHUNK, units), -(-b // stride) * stride), np.int32)
    buf[:, b:] = EMPTY
  for lo in range(0, units, _CHUNK):
    hi = min(lo + _CHUNK, units)
    x = buf[:hi - lo] if stride > 1 else keys[slot, lo:hi, at:at + b]
    _transpose_keys(block[:, lo:hi], x[:, :b])
    if stride > 1:
      x.sort(axis=-1)
      low, high = x[:, 0], x[:, b - 1]
    else:
      low, high = x.min(axis=-1), x.max(axis=-1)
    bad = np.flatnonzero((low <= KEY_NEG_INF) | (high >= KEY_POS_INF))
    count = np.full((hi - lo,), b, np.int32)
    if bad.size:
      _mask_nonfinite(x, bad)
      count[bad] = (x[bad, :b] != EMPTY).sum(axis=-1, dtype=np.int32)
      if stride > 1:
        x[bad] = np.sort(x[bad], axis=-1)
      low = x[:, :b].min(axis=-1)
      high = np.where(x[:, :b] == EMPTY, LOWEST, x[:, :b]).max(axis=-1)
    stats[:, lo:hi] = count, low, high
    if stride > 1:
      _pick(x, offset[lo:hi], stride, keys[slot, lo:hi, at:])


def _host_ingest_callback(ctx, outs, keys, blocks, index, slot, at, stride, offset):
  del ctx, keys  # `keys` is aliased to `outs[0]`
  keys, stats = np.asarray(outs[0]), np.asarray(outs[1])
  lead, (blocks, index, slot, at, stride, offset) = _lead(
      keys, (blocks, 3), (index, 0), (slot, 0), (at, 0), (stride, 0), (offset, 1))
  for i in np.ndindex(*lead):
    block, args = blocks[i][int(index[i])], (int(slot[i]), int(at[i]), int(stride[i]))
    _in_parallel(lambda u: _numpy_ingest(block[:, u], keys[i][:, u], *args, offset[i][u],
                                         stats[i][:, u]), keys.shape[-2])


def _host_compact_callback(ctx, out, keys, src, n, offset, stride, dst, at):
  del ctx, keys  # `keys` is aliased to `out`
  keys = np.asarray(out)
  lead, (src, n, offset, stride, dst, at) = _lead(
      keys, (src, 0), (n, 0), (offset, 1), (stride, 0), (dst, 0), (at, 0))
  for i in np.ndindex(*lead):
    rows, num, target = keys[i][int(src[i])], int(n[i]), keys[i][int(dst[i]), :, int(at[i]):]
    _in_parallel(lambda u: _numpy_thin(rows[u], num, offset[i][u], int(stride[i]), target[u]),
                 keys.shape[-2])


def host_ingest(keys, blocks, *args):
  """`quantile.ingest_block` on the CPU: `_numpy_ingest` on every unit, `keys` updated in place."""
  shapes = (jax.ShapeDtypeStruct(keys.shape, jnp.int32),
            jax.ShapeDtypeStruct((3, keys.shape[1]), jnp.int32))
  return buffer_callback(_host_ingest_callback, shapes, vmap_method="broadcast_all",
                         input_output_aliases={0: 0})(keys, blocks, *args)


def host_compact(keys, *args):
  """`quantile.compact_level` on the CPU: `_numpy_thin` on every unit, `keys` updated in place."""
  return buffer_callback(_host_compact_callback, jax.ShapeDtypeStruct(keys.shape, jnp.int32),
                         vmap_method="broadcast_all", input_output_aliases={0: 0})(keys, *args)
