"""Compiled CPU loops over upsampled activations that never write the upsampled maps out.

A light dissection's statistics touch every (pixel, unit) pair of a layer upsampled to the
segmentation's size, and on a CPU each dense pass over those maps costs what the memory bus
allows: writing a scene-world layer upsampled (0.5M pairs an image) took longer than the scene
GAN's forward, before any counting. These loops (numba, compiled once and cached on disk) read the
small raw featuremap instead, interpolate each output row on the fly with the arithmetic of
`jaxdissect.upsample` (rows, then columns; `a + (b - a) f`), and skip a whole image, row or
two-tap span of columns when its source values are all below the unit's level: the upsampled
value is a convex combination of them. numpy's vectorized kernels remain the fallback where numba
is not installed; XLA's fused floats may round a value's last bit differently from these (FMA),
so counts match theirs up to values that sit on a bin edge.

Layout: `raw [B, h, w, U]` float32 as XLA holds it (a unit's loops stride over units: the raw
map of an image is small enough to stay in cache); threads take disjoint units.
"""

from __future__ import annotations

import functools

import numpy as np

from jaxdissect.upsample import taps

try:
  import numba  # pylint: disable=g-import-not-at-top
except ImportError:  # pragma: no cover - numba is a dependency; without it numpy kernels run
  numba = None

AVAILABLE = numba is not None


@functools.lru_cache(maxsize=64)
def axis_table(size_in: int, size_out: int) -> tuple[np.ndarray, ...]:
  """`(i0, i1, f, starts)` of one axis: `jaxdissect.upsample.taps` plus, for each source index
  k, the first output position whose first tap is k (`starts [size_in + 1]`): the outputs
  between source k and k + 1 form one run, skipped together when both are below a level."""
  i0, i1, f = taps(size_in, size_out)
  starts = np.searchsorted(i0, np.arange(size_in + 1)).astype(np.int32)
  return i0.astype(np.int32), i1.astype(np.int32), f.astype(np.float32), starts


def fuses(raw_shape: tuple[int, ...], size: tuple[int, int]) -> bool:
  """Whether these loops can stand in for upsampling `raw [B, h, w, U]` to `size`: enlarging
  (or equal) sizes only; shrinking antialiases, which is another computation."""
  return AVAILABLE and raw_shape[1] <= size[0] and raw_shape[2] <= size[1]


def _jit(fn):
  return numba.njit(nogil=True, cache=True)(fn) if AVAILABLE else fn


@_jit
def _source_max(raw, u, b):
  """The largest finite-or-inf value of unit u's raw map of image b (NaN ignored)."""
  most = -np.inf
  for y in range(raw.shape[1]):
    for x in range(raw.shape[2]):
      if raw[b, y, x, u] > most:
        most = raw[b, y, x, u]
  return most


@_jit
def _row(raw, u, b, y0, y1, f, row):
  """Writes output row `(1 - f) raw[y0] + f raw[y1]` of unit u, image b into `row [w]` (as
  `upsample` computes it) and returns its largest value (NaN ignored)."""
  most = -np.inf
  for x in range(row.shape[0]):
    a = raw[b, y0, x, u]
    row[x] = a + (raw[b, y1, x, u] - a) * f
    if row[x] > most:
      most = row[x]
  return most


@_jit
def _cell(v, u, knots, widths, per_segment, top):
  """`tail_bins.cells_above` of one value above its unit's lo."""
  segments = widths.shape[1]
  if v > knots[u, segments]:
    return segments * per_segment + 2
  seg = 0
  jump = top
  while jump:
    ahead = min(seg + jump, segments - 1)
    if v > knots[u, ahead]:
      seg = ahead
    jump >>= 1
  j = np.ceil((v - knots[u, seg]) / widths[u, seg])
  j = min(max(j, np.float32(1)), np.float32(per_segment))
  return 1 + seg * per_segment + int(j)


def _count_tail(hist, minimum, maximum, nonfinite, raw, rows, knots, widths, yi0, yi1, yf, xf,
                xs, u0, u1):
  """Adds each upsampled value >= its unit's lo (units `u0..u1`) to `hist [K, U, T + 3]` as
  `tail_cpu._count` does: row 0 always (cell 1 for a value equal to lo), the concept rows of
  `rows [P, D]` (K: none) for values above lo; and folds the raw map's finite extremes and
  non-finite count into `minimum`, `maximum`, `nonfinite [U]` (`tail.TailState`'s bounds)."""
  num_concepts = hist.shape[0]
  segments = widths.shape[1]
  per_segment = (hist.shape[2] - 3) // segments
  top = 1  # cells_above's first step: a power of two, half the segments (0 for one)
  while top * 2 < segments:
    top *= 2
  if segments == 1:
    top = 0
  height, width, w = yi0.shape[0], xf.shape[0], raw.shape[2]
  row = np.empty(w, np.float32)
  for u in range(u0, u1):
    lo = knots[u, 0]
    least, most, bad = minimum[u], maximum[u], 0
    for b in range(raw.shape[0]):
      peak = -np.inf
      for y in range(raw.shape[1]):
        for x in range(w):
          a = raw[b, y, x, u]
          if np.isfinite(a):
            least, most = min(least, a), max(most, a)
          else:
            bad += 1
          if a > peak:
            peak = a
      if not peak >= lo:
        continue
      for i in range(height):
        if not _row(raw, u, b, yi0[i], yi1[i], yf[i], row) >= lo:
          continue
        first = (b * height + i) * width
        for k in range(w):
          a, c = row[k], row[min(k + 1, w - 1)]
          if not (a >= lo or c >= lo):
            continue
          for j in range(xs[k], xs[k + 1]):
            v = a + (c - a) * xf[j]
            if not v >= lo:
              continue
            if v == lo:
              hist[0, u, 1] += 1
              continue
            cell = _cell(v, u, knots, widths, per_segment, top)
            hist[0, u, cell] += 1
            for d in range(rows.shape[1]):
              concept = rows[first + j, d]
              if concept < num_concepts:
                hist[concept, u, cell] += 1
    minimum[u], maximum[u] = least, most
    nonfinite[u] += bad


count_tail = _jit(_count_tail)


def _largest(kept, count, raw, yi0, yi1, yf, xf, xs, u0, u1):
  """Folds the upsampled values of `raw` into `kept [U, keep]`, each unit's largest values so
  far (any order; `count[u]` of them valid), for units `u0..u1`; NaN never enters. Once a unit
  holds `keep` values their least is a floor that skips rows and spans that cannot enter; a
  buffer of twice `keep` is cut back to its `keep` largest whenever it fills."""
  keep = kept.shape[1]
  height, w = yi0.shape[0], raw.shape[2]
  buffer = np.empty(2 * keep, np.float32)
  row = np.empty(w, np.float32)
  for u in range(u0, u1):
    filled = count[u]
    buffer[:filled] = kept[u, :filled]
    floor = buffer[:filled].min() if filled == keep else -np.inf
    for b in range(raw.shape[0]):
      if not _source_max(raw, u, b) >= floor:
        continue
      for i in range(height):
        if not _row(raw, u, b, yi0[i], yi1[i], yf[i], row) >= floor:
          continue
        for k in range(w):
          a, c = row[k], row[min(k + 1, w - 1)]
          if not (a >= floor or c >= floor):
            continue
          for j in range(xs[k], xs[k + 1]):
            v = a + (c - a) * xf[j]
            if not v >= floor:
              continue
            buffer[filled] = v
            filled += 1
            if filled == buffer.shape[0]:
              buffer[:] = np.partition(buffer, filled - keep)
              buffer[:keep] = buffer[filled - keep:].copy()
              filled = keep
              floor = buffer[:keep].min()
    if filled > keep:
      buffer[:filled] = np.partition(buffer[:filled], filled - keep)
      buffer[:keep] = buffer[filled - keep:filled].copy()
      filled = keep
    kept[u, :filled] = buffer[:filled]
    count[u] = filled


largest = _jit(_largest)


_BUCKETS = 4096  # equal buckets between a unit's first and last level, for `_count_levels`


def _count_levels(above, count, nonfinite, raw, rows, edges, yi0, yi1, yf, xf, xs, u0, u1):
  """Adds, per label row c of `rows [P, D]` (K: none; row 0: every pixel), the upsampled values
  above each level `edges [U, T]` to `above [K, U, T]` and the finite ones to `count [K, U]`,
  and the non-finite ones to `nonfinite [U]`, for units `u0..u1` (`conditional_cpu`'s counts).

  A value's level (the edges strictly below it) comes from a table of equal buckets between the
  unit's first and last edge: a bucket with no edge inside has one level for all its values, and
  only values in a bucket holding an edge (or outside the edges) walk to theirs. Walking every
  value from the last one's level mispredicted a branch or two a value: 1.7x slower.
  """
  num_concepts, _, num_levels = above.shape
  height, width, w = yi0.shape[0], xf.shape[0], raw.shape[2]
  local = np.zeros((num_concepts, num_levels + 1), np.int64)
  row = np.empty(w, np.float32)
  level_at = np.empty(_BUCKETS + 1, np.int64)  # the level of the bucket's values; -1: walk
  start_at = np.empty(_BUCKETS + 1, np.int64)  # where a walk starts
  for u in range(u0, u1):
    local[:] = 0
    bad = 0
    first_edge, last_edge = edges[u, 0], edges[u, num_levels - 1]
    span = np.float64(last_edge) - np.float64(first_edge)
    scale = _BUCKETS / span if span > 0 else 0.0
    # Bucket g in 1.._BUCKETS - 1 holds the values with (v - first) * scale in [g - 1, g);
    # bucket 0 those at or below the first edge, bucket _BUCKETS those past the last bucket.
    # An edge within `slack` of a bucket's bounds counts as inside it (the bucket of a value
    # is computed in float64 and may be off by a rounding at its bounds).
    slack = 1e-9 * (abs(np.float64(first_edge)) + abs(np.float64(last_edge)) + span)
    level = 0
    for g in range(_BUCKETS + 1):
      bottom = first_edge + (g - 1) / scale if scale > 0 else np.float64(first_edge)
      top = first_edge + g / scale if scale > 0 else np.float64(first_edge)
      while level < num_levels and edges[u, level] < bottom - slack:
        level += 1
      start_at[g] = level if g else 0
      edge_inside = level < num_levels and edges[u, level] <= top + slack
      level_at[g] = -1 if (edge_inside or g == 0 or g == _BUCKETS) else level
    for b in range(raw.shape[0]):
      for i in range(height):
        _row(raw, u, b, yi0[i], yi1[i], yf[i], row)
        first = (b * height + i) * width
        for k in range(w):
          a, c = row[k], row[min(k + 1, w - 1)]
          for j in range(xs[k], xs[k + 1]):
            v = a + (c - a) * xf[j]
            if not np.isfinite(v):
              bad += 1
              continue
            x = (np.float64(v) - first_edge) * scale
            g = 0 if not x > 0 else (_BUCKETS if x >= _BUCKETS - 1 else int(x) + 1)
            level = level_at[g]
            if level < 0:
              level = start_at[g]
              while level < num_levels and edges[u, level] < v:
                level += 1
              while level > 0 and not edges[u, level - 1] < v:
                level -= 1
            local[0, level] += 1
            for d in range(rows.shape[1]):
              concept = rows[first + j, d]
              if concept < num_concepts:
                local[concept, level] += 1
    for c in range(num_concepts):  # above level t: the values whose level is t + 1 or more
      higher = 0
      for t in range(num_levels, 0, -1):
        higher += local[c, t]
        above[c, u, t - 1] += higher
      count[c, u] += higher + local[c, 0]
    nonfinite[u] += bad


count_levels = _jit(_count_levels)


def _gather(out, raw, positions, yi0, yi1, yf, xi0, xi1, xf, u0, u1):
  """`out[u, n]` = the upsampled value of unit u at flat pixel `positions[n]` (of `[B, H, W]`)
  for units `u0..u1`: a fixed sample of the values without writing the maps out."""
  height, width = yi0.shape[0], xi0.shape[0]
  for u in range(u0, u1):
    for n in range(positions.shape[0]):
      p = positions[n]
      b, i, j = p // (height * width), (p // width) % height, p % width
      y0, y1, f = yi0[i], yi1[i], yf[i]
      a = raw[b, y0, xi0[j], u]
      r0 = a + (raw[b, y1, xi0[j], u] - a) * f
      a = raw[b, y0, xi1[j], u]
      r1 = a + (raw[b, y1, xi1[j], u] - a) * f
      out[u, n] = r0 + (r1 - r0) * xf[j]


gather = _jit(_gather)
