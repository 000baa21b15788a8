"""Where a tail histogram puts its bins: per-unit segments of equal bins, between knots.

A unit's bracket `[lo, hi]` is cut at `S + 1` knots into S segments, each of `T / S` equal bins.
With one segment the bins are equal in width; with knots at the warmup's order statistics they
are about equal in *pixels*, and finer where the threshold is expected, so the bin that holds
the threshold (whose pixels bound the IoU error) is small where equal widths would pile
thousands of pixels into the densest bin. One pass at the default tolerance depends on it.

A value's cell (see `jaxdissect.stats.tail`) needs a segment lookup (a 4-step binary search for
16 segments, exact comparisons) and one division, written once for numpy and jax (`cells_above`)
so the CPU kernel and the jitted tally on other backends bin every value identically.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def narrowest(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
  """The smallest bin width used: below it float32 cannot tell values in the bracket apart."""
  return np.maximum(np.abs(lo), np.abs(hi)) * 1e-6 + 1e-30


def uniform_knots(lo: np.ndarray, hi: np.ndarray, segments: int = 1) -> np.ndarray:
  """`[U, S + 1]` knots cutting each bracket `[lo[u], hi[u]]` into `segments` equal parts."""
  lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
  steps = np.linspace(0.0, 1.0, segments + 1)
  return (lo[:, None] + (hi - lo)[:, None] * steps).astype(np.float32)


def normalize_knots(knots: np.ndarray, num_bins: int) -> np.ndarray:
  """`knots` as float32, each segment at least `T / S` narrowest bins wide (so every bin is
  resolvable and no width is zero): ties in the warmup (a ReLU's zeros) collapse segments."""
  knots = np.array(knots, np.float64)
  per_segment = num_bins // (knots.shape[1] - 1)
  for s in range(1, knots.shape[1]):
    least = knots[:, s - 1] + per_segment * narrowest(knots[:, s - 1], knots[:, s])
    knots[:, s] = np.maximum(knots[:, s], least)
  return knots.astype(np.float32)


def segment_widths(knots: np.ndarray, num_bins: int) -> np.ndarray:
  """`[U, S]` float32 bin width of each segment."""
  knots = np.asarray(knots, np.float32)
  per_segment = np.float32(num_bins // (knots.shape[1] - 1))
  return (np.diff(knots, axis=1) / per_segment).astype(np.float32)


def check_knots(knots: np.ndarray, num_units: int, num_bins: int) -> None:
  """Raises ValueError unless `knots` is `[U, S + 1]`, finite, non-decreasing, S divides T."""
  if knots.ndim != 2 or knots.shape[0] != num_units or knots.shape[1] < 2:
    raise ValueError(f"knots has shape {list(knots.shape)}, expected [{num_units}, S + 1] "
                     "with S >= 1 segments")
  segments = knots.shape[1] - 1
  if num_bins % segments:
    raise ValueError(f"{segments} segments do not divide {num_bins} bins")
  bad = ~np.all(np.isfinite(knots), axis=1) | np.any(np.diff(knots, axis=1) < 0, axis=1)
  if bad.any():
    u = int(np.argmax(bad))
    raise ValueError(f"bracket of unit {u} has knots {knots[u].tolist()}; need finite, "
                     "non-decreasing values")


def cells_above(xp: Any, values: Any, unit: Any, knots: Any, widths: Any, num_bins: int) -> Any:
  """Cells `2 .. T + 2` of values above their unit's first knot (numpy or jax as `xp`).

  `values` and `unit` (each value's unit) broadcast together; `knots [U, S + 1]`, `widths
  [U, S]`. Segment s holds `(knots[s], knots[s + 1]]`, its bin j (1-based)
  `(knots[s] + (j - 1) w, knots[s] + j w]`; cell = 1 + s T/S + j, and T + 2 above the last knot.
  Lookups are flat gathers from the small tables (numpy's `take_along_axis` was 10x slower).
  """
  segments = widths.shape[-1]
  per_segment = num_bins // segments
  flat_knots, flat_widths = knots.reshape(-1), widths.reshape(-1)
  row = unit * (segments + 1)
  seg = xp.zeros(xp.broadcast_shapes(xp.shape(values), xp.shape(unit)), np.int32)
  step = 1 << max(segments - 1, 0).bit_length() >> 1  # a power of two, half the segments
  exact = segments & (segments - 1) == 0  # a power of two: seg + step never passes S - 1
  while step:  # arithmetic, not `where`: numpy's `where` on random masks costs ~10 ns a value
    ahead = seg + step if exact else xp.minimum(seg + step, segments - 1)
    seg = seg + (values > xp.take(flat_knots, row + ahead)).astype(np.int32) * (ahead - seg)
    step >>= 1
  start = xp.take(flat_knots, row + seg)
  width = xp.take(flat_widths, unit * segments + seg)
  j = xp.clip(xp.ceil((values - start) / width), 1, per_segment).astype(np.int32)
  last = xp.take(flat_knots, row + segments)
  return xp.where(values > last, num_bins + 2, 1 + seg * per_segment + j)


def bin_edges(knots: np.ndarray, num_bins: int) -> tuple[np.ndarray, np.ndarray]:
  """`(edges [U, T + 1], widths [U, T + 2])` float64: bin j is `(edges[j - 1], edges[j]]` with
  width `widths[j]` for j in 1..T (`widths[0]` and `widths[T + 1]` repeat the outer bins')."""
  knots64 = np.asarray(knots, np.float64)
  widths = np.asarray(segment_widths(knots, num_bins), np.float64)
  segments = widths.shape[1]
  per_segment = num_bins // segments
  j = np.arange(num_bins + 1)
  seg = np.minimum(j // per_segment, segments - 1)
  edges = knots64[:, seg] + (j - seg * per_segment) * widths[:, seg]
  bins = np.clip(np.arange(num_bins + 2) - 1, 0, num_bins - 1) // per_segment
  return edges, widths[:, bins]
