"""The conditional histogram's counting as numpy code, in place on XLA's CPU buffers.

IQR thresholds need, for every label row c (row 0: all pixels), unit u and level t, the pixels
of c whose activation is above `edges[u, t]`. XLA finds each (pixel, unit) pair's level with a
binary search (~20 ns a pair) and scatter-adds it once per label channel (~10 ns an update).
Here each row's values are sorted instead (numpy's SIMD sort, ~2 ns a value) and the levels are
looked up in the sorted values, 100 lookups per unit: the pixels of a label row are the same for
every unit, so one column gather feeds all units. Values arrive as order-preserving int32 keys
(`quantile_keys.to_key`), non-finite ones as the key of -inf, below every level, so "above" and
the finite count are exact integer comparisons. Threads take disjoint units. The result is the
state the jax scatter writes, bit for bit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.stats import upsampled_kernels
from jaxdissect.stats.backend import (add_row_pixels, buffer_callback, over_units,
                                      worth_threads)
from jaxdissect.stats.quantile_keys import KEY_NEG_INF


def _above(block: np.ndarray, queries: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray,
                                                                             np.ndarray]:
  """Per unit (row of `block [n, m]` keys), how many keys exceed each query `[n, T]` and the
  `floor [n]` key (-inf): one sort per row, one `searchsorted` for all rows (keys offset by
  row into one ascending int64 array)."""
  num, size = block.shape
  shift = np.arange(num, dtype=np.int64) << 32
  flat = (np.sort(block, axis=1).astype(np.int64) + shift[:, None]).reshape(-1)
  start = np.arange(num, dtype=np.int64) * size
  at = np.searchsorted(flat, (queries + shift[:, None]).reshape(-1), side="right")
  low = np.searchsorted(flat, floor + shift, side="right")
  return size - (at.reshape(queries.shape) - start[:, None]), size - (low - start)


def _count(above: np.ndarray, count: np.ndarray, keys: np.ndarray, groups: list[np.ndarray],
           edge_keys: np.ndarray, units: slice) -> None:
  """Adds the counts of `keys [U, P]` of `units`; `groups[c]` are the pixels of label row c."""
  block, queries = keys[units], edge_keys[units].astype(np.int64)
  floor = np.full(block.shape[0], KEY_NEG_INF, np.int64)
  for row, pixels in enumerate(groups):
    if row and not pixels.size:
      continue
    a, finite = _above(block if row == 0 else block[:, pixels], queries, floor)
    above[row, units] += a.astype(np.int32)
    count[row, units] += finite.astype(np.int32)


def _groups(rows: np.ndarray, num_concepts: int) -> list[np.ndarray]:
  """Pixel indices of each label row (row 0: all), from `rows [P, D]` (K: none)."""
  pixel = np.broadcast_to(np.arange(rows.shape[0])[:, None], rows.shape).reshape(-1)
  row = rows.reshape(-1)
  order = np.argsort(row, kind="stable")
  bounds = np.searchsorted(row[order], np.arange(num_concepts + 1))
  return [np.arange(rows.shape[0])] + [np.sort(pixel[order[bounds[c]:bounds[c + 1]]])
                                       for c in range(1, num_concepts)]


def _callback(ctx, outs, above, count, pixels, keys, rows, edge_keys):
  del ctx, above, count, pixels  # aliased to `outs`
  above, count, pixels = (np.asarray(x) for x in outs)
  keys, rows, edge_keys = np.asarray(keys), np.asarray(rows), np.asarray(edge_keys)
  num_concepts = above.shape[0]
  groups = _groups(rows, num_concepts)
  pixels += np.array([len(g) for g in groups], np.int32)
  over_units(lambda part: _count(above, count, keys, groups, edge_keys, part), keys.shape[0],
             worth_threads(keys.size))


def host_count(above, count, pixels, keys, rows, edge_keys):
  """Counts `keys [U, P]` (order-preserving keys of the values; non-finite as -inf) with label
  rows `rows [P, D]` (K: none) against `edge_keys [U, T]` into `above [K, U, T]`, `count [K, U]`
  and `pixels [K]`, in place; returns them."""
  shapes = tuple(jax.ShapeDtypeStruct(x.shape, jnp.int32) for x in (above, count, pixels))
  return buffer_callback(_callback, shapes, input_output_aliases={0: 0, 1: 1, 2: 2})(
      above, count, pixels, keys, rows, edge_keys)


def _fused_callback(size, ctx, outs, above, count, pixels, nonfinite, raw, rows, edges):
  del ctx, above, count, pixels, nonfinite  # aliased to `outs`
  above, count, pixels, nonfinite = (np.asarray(x) for x in outs)
  raw, rows, edges = np.asarray(raw), np.asarray(rows), np.asarray(edges)
  add_row_pixels(pixels, rows)
  yi0, yi1, yf, _ = upsampled_kernels.axis_table(raw.shape[1], size[0])
  _, _, xf, xs = upsampled_kernels.axis_table(raw.shape[2], size[1])
  over_units(lambda part: upsampled_kernels.count_levels(
      above, count, nonfinite, raw, rows, edges, yi0, yi1, yf, xf, xs, part.start, part.stop),
      raw.shape[-1], worth_threads(rows.shape[0] * raw.shape[-1]))


def host_count_fused(above, count, pixels, nonfinite, raw, rows, edges, *,
                     size: tuple[int, int]):
  """`host_count` of the values `upsample(raw, size)` (and their non-finite count), computed
  from `raw [B, h, w, U]` as they are counted (`upsampled_kernels`)."""
  shapes = tuple(jax.ShapeDtypeStruct(x.shape, jnp.int32)
                 for x in (above, count, pixels, nonfinite))
  callback = functools.partial(_fused_callback, tuple(size))
  return tuple(buffer_callback(callback, shapes, input_output_aliases={0: 0, 1: 1, 2: 2, 3: 3})(
      above, count, pixels, nonfinite, raw.astype(jnp.float32), rows, edges))
