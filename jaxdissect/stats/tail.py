"""Fine per-concept histograms of the top tail of each unit: thresholds and IoU in one pass.

A unit's threshold is its (1 - q) quantile, and IoU counts pixels above that threshold. Both are
needed from a single pass over the images, before the threshold is known. This tally bins every
activation above a bracket's low end `lo` into T fine bins up to `hi`, bracket and bins placed
where a warmup sample predicts the threshold (`stats.tail_bins`: S segments of T / S equal bins
between per-unit knots), with one row per concept (row 0: all pixels). At the end the threshold
is read off row 0 and every intersection count off the concept rows at the same place.

Cells (per unit):
  cell 0          a < lo (and NaN): never tallied, derived from the row totals when read
  cell 1          a == lo, row 0 only (the point mass at lo; concept rows never need it)
  cell 1 + j      bin j, 1..T
  cell T + 2      a > hi (and +inf)
so "a > the upper edge of bin j" is exactly "cell > 1 + j": counts above any bin edge are exact
integers. Inside the bin that holds the threshold, values are assumed spread uniformly, so the
threshold and the intersection counts are linear interpolations, and `tail_iou` also returns
hard bounds on IoU from the two edges of that bin. Callers refine (`refine_brackets`) the units
whose bound is too wide, or whose threshold fell outside the bracket, and run the pass again.

Ties: when the threshold is a value shared by many pixels (a ReLU's zero, a dead unit), choose
lo equal to that value: the quantile then lands in the point mass at lo, the threshold is lo
exactly and "on" means a > lo, as for an exact quantile, with no interpolation.

Counting: only values >= lo reach a cell (about 3q of them with the warmup's brackets). On the
CPU a numpy kernel (`tail_cpu`) picks them out and counts their packed (row, unit, cell) keys
with one sort, in place on XLA's buffer; elsewhere XLA scatter-adds every value (cell 0 dropped).
Both write identical states. Memory: K * U * (T + 3) int32. Extremes and non-finite counts,
which only need bounds, come from the raw featuremap when the caller passes it (upsampling is a
convex combination, so the raw extremes bound the upsampled ones).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.errors import check_shape
from jaxdissect.stats import tail_cpu, upsampled_kernels
from jaxdissect.stats.base import Stat
from jaxdissect.stats.conditional import _label_rows, add_row_pixels
from jaxdissect.stats.iou import check_labels, count_bad_labels
from jaxdissect.stats.backend import numpy_on_cpu
from jaxdissect.stats.tail_bins import (bin_edges, cells_above, check_knots, narrowest,
                                        normalize_knots, uniform_knots)


class TailState(NamedTuple):
  """Tallies of U units against K label values on T fine bins.

  Attributes:
    knots: `[U, S + 1]` float32, the bracket `[knots[:, 0], knots[:, S]]` cut into S segments of
      T / S equal bins each (configuration; `stats.tail_bins`).
    hist: `[K, U, T + 3]` int32, pixels of row c (0: all) per cell of unit u (module docstring).
    pixels: `[K]` int32, pixels of row c (row 0: all pixels).
    minimum, maximum: `[U]` float32, bounds on the finite activations (exact extremes, or those
      of the raw featuremap).
    nonfinite: `[U]` int32, non-finite activations (the tally is invalid when > 0).
    bad_labels: `[]` int32, label entries outside `[0, K)` (ignored).
  """

  knots: jax.Array
  hist: jax.Array
  pixels: jax.Array
  minimum: jax.Array
  maximum: jax.Array
  nonfinite: jax.Array
  bad_labels: jax.Array


def tail_histogram(num_units: int, num_concepts: int, knots: np.ndarray,
                   num_bins: int = 2048) -> Stat:
  """Per-concept fine histograms of each unit over the bracket its `knots [U, S + 1]` span
  (`tail_bins.uniform_knots(lo, hi)` for plain equal bins).

  Returns a `Stat`: update(state, acts [B, H, W, U], labels [B, H, W, D], raw=None) -> state,
  where `raw [B, h, w, U]` is the featuremap `acts` was upsampled from (optional; see above);
  merge adds counts; result is `tail_iou` (needs q: call it directly).
  """
  knots = np.asarray(knots, np.float32)
  check_knots(knots, num_units, num_bins)
  if num_bins < 1 or num_concepts < 1:
    raise ValueError(f"need num_bins >= 1 and num_concepts >= 1, got {num_bins}, {num_concepts}")
  if num_concepts * num_units * (num_bins + 3) >= 2**31:
    raise ValueError(f"tail histogram of [{num_concepts}, {num_units}, {num_bins + 3}] cells "
                     "exceeds int32 indexing; use fewer bins")
  knots = normalize_knots(knots, num_bins)

  def init() -> TailState:
    zeros = lambda *shape: jnp.zeros(shape, jnp.int32)
    return TailState(
        knots=jnp.asarray(knots), hist=zeros(num_concepts, num_units, num_bins + 3),
        pixels=zeros(num_concepts),
        minimum=jnp.full((num_units,), jnp.inf, jnp.float32),
        maximum=jnp.full((num_units,), -jnp.inf, jnp.float32),
        nonfinite=zeros(num_units), bad_labels=zeros())

  def update(state: TailState, acts: jax.Array, labels: jax.Array,
             raw: jax.Array | None = None) -> TailState:
    acts, labels = jnp.asarray(acts), jnp.asarray(labels)
    check_shape("acts", acts.shape, (None, None, None, num_units))
    check_labels(labels, acts.shape[:3])
    if raw is not None:
      check_shape("raw", raw.shape, (acts.shape[0], None, None, num_units))
    return _add_batch(state, acts, labels, raw)

  return Stat(init, update, merge_tail, None)


def _add_batch(state: TailState, acts: jax.Array, labels: jax.Array,
               raw: jax.Array | None) -> TailState:
  """`state` with one batch counted in (the histogram updated in place)."""
  num_concepts, num_units, num_cells = state.hist.shape
  num_pixels = acts.shape[0] * acts.shape[1] * acts.shape[2]
  values = acts.reshape(num_pixels, num_units).astype(jnp.float32)
  labels = labels.reshape(num_pixels, -1)
  rows = _label_rows(labels, num_concepts)
  widths = jnp.diff(state.knots, axis=1) / np.float32((num_cells - 3) // (state.knots.shape[1] - 1))
  if raw is not None and upsampled_kernels.fuses(raw.shape, acts.shape[1:3]):
    # On a CPU the values are interpolated from `raw` as they are counted (and its bounds
    # taken in the same loop); XLA then drops the upsampling that made `acts`.
    host = functools.partial(tail_cpu.host_count_fused, size=acts.shape[1:3])
    hist, pixels, minimum, maximum, nonfinite = numpy_on_cpu(
        lambda h, p, lo, hi, n, v, r, *rest: tuple(host(h, p, lo, hi, n, r, *rest)),
        lambda h, p, lo, hi, n, v, r, *rest: (
            *_device_count(h, p, v, *rest), *_bounds(lo, hi, n, r, num_units)),
        state.hist, state.pixels, state.minimum, state.maximum, state.nonfinite, values, raw,
        rows, state.knots, widths)
  else:
    hist, pixels = numpy_on_cpu(tail_cpu.host_count, _device_count, state.hist, state.pixels,
                                values, rows, state.knots, widths)
    minimum, maximum, nonfinite = _bounds(state.minimum, state.maximum, state.nonfinite,
                                          values if raw is None else raw, num_units)
  return state._replace(hist=hist, pixels=pixels, minimum=minimum, maximum=maximum,
                        nonfinite=nonfinite,
                        bad_labels=state.bad_labels + count_bad_labels(labels, num_concepts))


def _bounds(minimum, maximum, nonfinite, values, num_units):
  """The running finite extremes and non-finite count of each unit, with `values [..., U]`."""
  values = values.reshape(-1, num_units).astype(jnp.float32)
  finite = jnp.isfinite(values)
  return (jnp.minimum(minimum, jnp.min(jnp.where(finite, values, jnp.inf), axis=0)),
          jnp.maximum(maximum, jnp.max(jnp.where(finite, values, -jnp.inf), axis=0)),
          nonfinite + jnp.sum(~finite, axis=0, dtype=jnp.int32))


def _device_count(hist, pixels, values, rows, knots, widths):
  """The counting of `tail_cpu.host_count` as one XLA scatter-add over every value."""
  num_concepts, num_units, num_cells = hist.shape
  lo = knots[:, 0]
  above = cells_above(jnp, values, jnp.arange(num_units), knots, widths, num_cells - 3)
  cells = jnp.where(values > lo, above, jnp.where(values == lo, 1, 0))
  size = hist.size
  cell = jnp.arange(num_units, dtype=jnp.int32) * num_cells + cells  # [P, U]
  flat = hist.reshape(-1).at[jnp.where(cells > 0, cell, size).ravel()].add(1, mode="drop")
  for r in range(rows.shape[1]):
    row = rows[:, r:r + 1]
    index = jnp.where((row < num_concepts) & (cells > 1), row * (num_units * num_cells) + cell,
                      size)
    flat = flat.at[index.ravel()].add(1, mode="drop")
  return flat.reshape(hist.shape), add_row_pixels(pixels, rows)


def merge_tail(a: TailState, b: TailState) -> TailState:
  """Adds the counts of two tallies over the same brackets (a's brackets are kept)."""
  return TailState(
      knots=a.knots, hist=a.hist + b.hist,
      pixels=a.pixels + b.pixels, minimum=jnp.minimum(a.minimum, b.minimum),
      maximum=jnp.maximum(a.maximum, b.maximum), nonfinite=a.nonfinite + b.nonfinite,
      bad_labels=a.bad_labels + b.bad_labels)


class TailResult(NamedTuple):
  """Thresholds and IoU read from a `TailState` (U units, K label values).

  Attributes:
    thresholds: `[U]` the (1 - q) quantile (interpolated inside its bin, or lo exactly).
    active: `[U]` pixels above the threshold (q * (N - 1), or an exact count at a tie).
    iou: `[U, K]` IoU of "act > threshold" with each label value (column 0 is 0).
    iou_low, iou_high: `[U, K]` hard bounds on the IoU at the exact quantile.
    resolved: `[U]` bool, False where the quantile fell outside the bracket (below lo
      excluding the point mass at lo, or above hi); those units' numbers are not valid.
    bin: `[U]` int, the bin holding the quantile (0 for the point mass at lo).
  """

  thresholds: np.ndarray
  active: np.ndarray
  iou: np.ndarray
  iou_low: np.ndarray
  iou_high: np.ndarray
  resolved: np.ndarray
  bin: np.ndarray

  @property
  def bound(self) -> np.ndarray:
    """`[U]` the largest distance from any IoU of the unit to its hard bounds."""
    return np.max(np.maximum(self.iou_high - self.iou, self.iou - self.iou_low), axis=1)


def _with_cell_zero(state: TailState) -> np.ndarray:
  """`hist` as float64 with cell 0 (below lo) filled in from the row totals `pixels`."""
  cells = np.asarray(state.hist, np.float64)
  rows = np.asarray(state.pixels, np.float64)[:, None]
  cells[..., 0] = rows - cells[..., 1:].sum(axis=-1)
  return cells


def tail_iou(state: TailState, q: float) -> TailResult:
  """Each unit's (1 - q) quantile and the IoU of its top-q region with every label value.

  The quantile follows numpy's linear rule over all N finite values, and "on" is strictly
  above it. Inside an ordinary bin the values are taken as spread uniformly (estimate) and the
  bounds allow any arrangement; a bin no wider than float32 can resolve, like the point mass at
  lo, holds a single value, which settles "on" exactly from the ranks.
  """
  if not 0.0 < q < 1.0:
    raise ValueError(f"q is {q}, expected 0 < q < 1")
  cells = _with_cell_zero(state)  # [K, U, T + 3]
  at_lo = cells[0, :, 1]
  hist = np.concatenate([cells[..., :1] + cells[..., 1:2], cells[..., 2:]], axis=-1)
  num_concepts, num_units, num_cells = hist.shape  # bin 0 now holds everything <= lo
  num_bins = num_cells - 2
  above = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1]  # above[.., j] = count in bins >= j
  above = np.concatenate([above, np.zeros_like(above[..., :1])], axis=-1)  # [K, U, T + 3]
  total = above[0, :, 0]
  target = q * np.maximum(total - 1.0, 0.0)  # pixels strictly above the quantile
  # Values strictly above ascending position floor((1 - q)(N - 1)): "on" if no ties there.
  strictly_above = total - 1.0 - np.floor((1.0 - q) * np.maximum(total - 1.0, 0.0))
  units = np.arange(num_units)
  knots = np.asarray(state.knots)
  edges, widths = bin_edges(knots, num_bins)
  # The bin j with above[0, u, j + 1] <= target < above[0, u, j].
  j = np.sum(above[0, :, 1:] > target[:, None], axis=1)  # in [0, T + 1]
  upper = above[:, units, j + 1]  # [K, U] counts in bins above j
  lower = above[:, units, j]  # [K, U] counts in bins >= j
  in_point_mass = (j == 0) & (target < upper[0] + at_lo)
  inside = (j >= 1) & (j <= num_bins)
  edge_above = edges[units, np.clip(j, 0, num_bins)]
  edge_below = edges[units, np.clip(j - 1, 0, num_bins)]
  width = widths[units, j]
  point_bin = inside & (width <= 1.5 * narrowest(edge_below, edge_above))
  resolved = inside | in_point_mass
  mass = np.maximum(lower[0] - upper[0], 1.0)
  frac = np.clip((target - upper[0]) / mass, 0.0, 1.0)  # share of the bin above the threshold
  # A single-valued bin is all on or all off: on when the position falls below its values.
  takes_bin = point_bin & (strictly_above >= lower[0])
  exact = in_point_mass | point_bin
  ic = np.where(exact, np.where(takes_bin, lower, upper), upper + frac * (lower - upper))
  active = np.where(exact, np.where(takes_bin, lower[0], upper[0]), target)
  thresholds = np.where(in_point_mass, edges[:, 0], np.where(
      point_bin, np.where(takes_bin, edge_below, edge_above), edge_above - width * frac))
  concept = np.asarray(state.pixels, np.float64)[:, None]  # [K, 1]

  def iou(i: np.ndarray, on: np.ndarray) -> np.ndarray:
    union = np.maximum(on[None], i) + concept - i
    with np.errstate(divide="ignore", invalid="ignore"):
      out = np.where(union > 0, i / np.maximum(union, 1e-300), 0.0)
    out = np.clip(out.T, 0.0, 1.0)  # [U, K]
    out[:, 0] = 0.0
    return out

  estimate = iou(ic, active)
  low = np.where(exact[:, None], estimate, iou(upper, lower[0]))
  high = np.where(exact[:, None], estimate, iou(lower, upper[0]))
  return TailResult(thresholds=thresholds, active=active, iou=estimate, iou_low=low,
                    iou_high=high, resolved=resolved, bin=j)


def refine_brackets(state: TailState, result: TailResult, tolerance: float
                    ) -> tuple[np.ndarray, np.ndarray]:
  """New knots `[U, S + 1]` and the mask of units that need another pass.

  A unit needs one when its quantile fell outside the bracket (the new bracket is the range
  between the exact extreme and the old bracket's end) or when its IoU bound (`result.bound`)
  exceeds `tolerance` (the new bracket is the bin that holds the quantile, cut again into T
  equal bins). Other units keep their knots, so a rerun reproduces their numbers exactly.
  """
  knots = np.asarray(state.knots)
  num_bins = state.hist.shape[-1] - 3
  edges, widths = bin_edges(knots, num_bins)
  lo, hi = edges[:, 0], edges[:, -1]
  mn, mx = np.asarray(state.minimum, np.float64), np.asarray(state.maximum, np.float64)
  j = result.bin
  units = np.arange(len(j))
  below = ~result.resolved & (j == 0)
  over = ~result.resolved & (j > num_bins)
  inside = np.clip(j, 1, num_bins)
  point = widths[units, inside] <= 1.5 * narrowest(edges[units, inside - 1], edges[units, inside])
  loose = result.resolved & (result.bound > tolerance) & (j >= 1) & ~point
  new_lo, new_hi = lo.copy(), hi.copy()
  new_lo[below], new_hi[below] = mn[below], lo[below]
  new_lo[over], new_hi[over] = hi[over], mx[over]
  new_lo[loose], new_hi[loose] = edges[units, inside - 1][loose], edges[units, inside][loose]
  redo = below | over | loose
  fresh = normalize_knots(uniform_knots(new_lo, new_hi, knots.shape[1] - 1), num_bins)
  return np.where(redo[:, None], fresh, knots).astype(np.float32), redo

