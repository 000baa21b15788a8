"""The tail tally's counting as numpy code, in place on XLA's CPU buffers.

XLA's CPU scatter costs about 10 ns per update even for the updates it drops, and the tail
tally would drop about 97% of them (values below their unit's bracket): it was most of a light
dissection's time. Here the values at or above each unit's `lo` are picked out first
(`flatnonzero`, under a nanosecond per value), only those are binned (`tail_bins.cells_above`,
the same arithmetic as the jax path), and their packed (row, unit, cell) keys are counted with
one sort. The values come units major, so a unit's picked values lie in runs that
`flatnonzero` skips through (3.5x faster than pixels major), and threads take disjoint units
(numpy releases the GIL in its loops), so their histogram cells never collide. The result is
the state `tail._device_count` writes, bit for bit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.stats import upsampled_kernels
from jaxdissect.stats.backend import (add_row_pixels, buffer_callback, over_units,
                                      worth_threads)
from jaxdissect.stats.tail_bins import cells_above


def _count(hist: np.ndarray, values: np.ndarray, rows: np.ndarray, knots: np.ndarray,
           widths: np.ndarray, units: slice) -> None:
  """Counts the values >= lo of `units` (`values [U, P]`, units major: the picked values of a
  unit lie in runs, which `flatnonzero` skips fast) into their rows of `hist`."""
  num_concepts, num_units, num_cells = hist.shape
  num_pixels = values.shape[1]
  lo = knots[units, 0]
  picked = np.flatnonzero(values[units] >= lo[:, None])
  unit, pixel = np.divmod(picked, num_pixels)
  v = values[units].reshape(-1)[picked]
  unit += units.start
  at_lo = v == knots[unit, 0]
  cells = np.where(at_lo, 1, cells_above(np, v, unit, knots, widths, num_cells - 3))
  base = (unit * num_cells + cells).astype(np.int32)  # K * U * (T + 3) < 2**31 (checked)
  keys = [base]
  for d in range(rows.shape[1]):
    row = rows[pixel, d]
    keep = (row < num_concepts) & ~at_lo
    keys.append(row[keep] * np.int32(num_units * num_cells) + base[keep])
  keys = np.sort(np.concatenate(keys))
  if keys.size:
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    sizes = np.diff(np.append(starts, keys.size)).astype(np.int32)
    hist.reshape(-1)[keys[starts]] += sizes  # units' cells are disjoint: no lock needed


def _callback(ctx, outs, hist, pixels, values, rows, knots, widths):
  del ctx, hist, pixels  # aliased to `outs`
  hist, pixels = np.asarray(outs[0]), np.asarray(outs[1])
  values, rows = np.asarray(values), np.asarray(rows)
  knots, widths = np.asarray(knots), np.asarray(widths)
  add_row_pixels(pixels, rows)
  over_units(lambda part: _count(hist, values, rows, knots, widths, part), values.shape[0],
             worth_threads(values.size))


def host_count(hist, pixels, values, rows, knots, widths):
  """Counts `values [P, U]` with label rows `rows [P, D]` (K: none) into `hist [K, U, T + 3]`
  and `pixels [K]`, both updated in place; returns them."""
  values = values.T  # units major (XLA writes it so as it upsamples)
  shapes = (jax.ShapeDtypeStruct(hist.shape, jnp.int32),
            jax.ShapeDtypeStruct(pixels.shape, jnp.int32))
  return buffer_callback(_callback, shapes, input_output_aliases={0: 0, 1: 1})(
      hist, pixels, values, rows, knots, widths)


def _fused_callback(size, ctx, outs, hist, pixels, minimum, maximum, nonfinite, raw, rows, knots,
                    widths):
  del ctx, hist, pixels, minimum, maximum, nonfinite  # aliased to `outs`
  hist, pixels, minimum, maximum, nonfinite = (np.asarray(x) for x in outs)
  raw, rows = np.asarray(raw), np.asarray(rows)
  knots, widths = np.asarray(knots), np.asarray(widths)
  add_row_pixels(pixels, rows)
  yi0, yi1, yf, _ = upsampled_kernels.axis_table(raw.shape[1], size[0])
  _, _, xf, xs = upsampled_kernels.axis_table(raw.shape[2], size[1])
  over_units(lambda part: upsampled_kernels.count_tail(
      hist, minimum, maximum, nonfinite, raw, rows, knots, widths, yi0, yi1, yf, xf, xs,
      part.start, part.stop), raw.shape[-1], worth_threads(rows.shape[0] * raw.shape[-1]))


def host_count_fused(hist, pixels, minimum, maximum, nonfinite, raw, rows, knots, widths, *,
                     size: tuple[int, int]):
  """`host_count` of the values `upsample(raw, size)`, computed from `raw [B, h, w, U]` as they
  are counted (`upsampled_kernels`: the upsampled maps are never written out), and the raw
  map's finite extremes and non-finite count folded into `minimum`, `maximum`, `nonfinite`."""
  state = (hist, pixels, minimum, maximum, nonfinite)
  shapes = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in state)
  callback = functools.partial(_fused_callback, tuple(size))
  return buffer_callback(callback, shapes, input_output_aliases={i: i for i in range(5)})(
      *state, raw.astype(jnp.float32), rows, knots, widths)
