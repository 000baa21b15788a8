"""The quantile sketch's two heavy steps in jnp, for every backend but the CPU.

Turning a raw block into level items and compacting a level write into the level array
`[J, U, 2k]` through `dynamic_update_slice`, exactly the entries the numpy kernels
(`quantile_cpu`) write on the CPU, so states are bit-identical on every backend;
`jaxdissect.stats.quantile` picks one per backend. `write` is also how the sketch's merge
appends one level to another.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdissect.stats.quantile_keys import EMPTY, KEY_NEG_INF, KEY_POS_INF, LOWEST, to_key


def _thin(rows, n, offset, stride, width):
  """jnp version of `quantile_cpu._numpy_thin`, returning `[U, width]` with `EMPTY` in unused
  slots."""
  size = rows.shape[-1]
  ordered = jnp.sort(jnp.where(jnp.arange(size) < n, rows, EMPTY), axis=-1)
  i = jnp.arange(width, dtype=jnp.int32)[None, :]
  valid = i < (n - offset[:, None] + stride - 1) // stride
  idx = jnp.where(valid, offset[:, None] + stride * i, 0)
  picked = jnp.take_along_axis(ordered, jnp.minimum(idx, size - 1), axis=-1)
  return jnp.where(valid, picked, EMPTY)


def write(keys, slot, at, items, count):
  """Writes the first `count` columns of `items` `[U, w]` to `keys[slot, :, at:]`, in place."""
  start = (slot, 0, at)
  current = jax.lax.dynamic_slice(keys, start, (1,) + items.shape)[0]
  items = jnp.where(jnp.arange(items.shape[1]) < count, items, current)
  return jax.lax.dynamic_update_slice(keys, items[None], start)


def device_ingest(keys, blocks, index, slot, at, stride, offset):
  """`quantile.ingest_block` in jnp."""
  raw = to_key(jax.lax.dynamic_index_in_dim(blocks, index, 0, keepdims=False).T)
  finite = (raw > KEY_NEG_INF) & (raw < KEY_POS_INF)
  raw = jnp.where(finite, raw, EMPTY)
  stats = jnp.stack([finite.sum(-1, dtype=jnp.int32), raw.min(-1),
                     jnp.where(finite, raw, LOWEST).max(-1)])
  b = raw.shape[1]
  items = jax.lax.cond(stride == 1, lambda: raw, lambda: _thin(raw, b, offset, stride, b))
  return write(keys, slot, at, items, (b - 1) // stride + 1), stats


def device_compact(keys, src, n, offset, stride, dst, at):
  """`quantile.compact_level` in jnp."""
  rows = jax.lax.dynamic_index_in_dim(keys, src, 0, keepdims=False)
  k = keys.shape[-1] // 2
  return write(keys, dst, at, _thin(rows, n, offset, stride, k), (n + stride - 1) // stride)
