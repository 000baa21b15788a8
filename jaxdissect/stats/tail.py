"""Fine per-concept histograms of the top tail of each unit: thresholds and IoU in one pass.

A unit's threshold is its (1 - q) quantile, and IoU counts pixels above that threshold. Both are
needed from a single pass over the images, before the threshold is known. This tally bins every
activation into T fine bins spanning a bracket `[lo, hi]` that a warmup sample predicts will
contain the threshold, with one row per concept (row 0: all pixels). At the end the threshold is
read off row 0 and every intersection count is read off the concept rows at the same place.

Bins (per unit, width w = (hi - lo) / T):
  bin 0           a <= lo
  bin j, 1..T     lo + (j - 1) w < a <= lo + j w
  bin T + 1       a > hi
so "a > lo + j w" is exactly "bin > j": counts above any bin edge are exact integers. Inside the
bin that holds the threshold, values are assumed spread uniformly, so the threshold and the
intersection counts are linear interpolations, and `tail_iou` also returns hard bounds on IoU
from the two edges of that bin. Callers refine (`refine_brackets`) the units whose bound is too
wide, or whose threshold fell outside the bracket, and run the pass again.

Ties: bin 0 includes lo itself; the histogram keeps values equal to lo in a cell of their own. When the threshold is a
value shared by many pixels (a ReLU's zero, a dead unit), choose lo equal to that value: the
quantile then lands in the point mass at lo, the threshold is lo exactly and "on" means a > lo,
as for an exact quantile, with no interpolation.

Cost per pixel and unit: one bin index and (1 + D) scatter-adds for D label channels, whatever T
is. Memory: K * U * (T + 3) int32. Extremes and non-finite counts, which only need bounds, are
taken from the raw featuremap when the caller passes it (upsampling is a convex combination, so
the raw extremes bound the upsampled ones), sparing passes over the 10-100x larger upsampled maps.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.errors import check_shape
from jaxdissect.stats.base import Stat
from jaxdissect.stats.conditional import _histogram, _label_rows
from jaxdissect.stats.iou import check_labels, count_bad_labels


class TailState(NamedTuple):
  """Tallies of U units against K label values on T fine bins.

  Attributes:
    lo: `[U]` float32, lower end of the bracket (configuration).
    width: `[U]` float32, bin width, > 0 (configuration).
    hist: `[K, U, T + 3]` int32, pixels of row c (0: all) per cell of unit u: cell 0 below lo
      (not tallied: `pixels[c]` minus the other cells), cell 1 equal to lo, cell 1 + j bin j
      (1..T), cell T + 2 above hi.
    pixels: `[K]` int32, pixels of row c (row 0: all pixels).
    minimum, maximum: `[U]` float32, bounds on the finite activations (exact extremes, or those
      of the raw featuremap).
    nonfinite: `[U]` int32, non-finite activations (the tally is invalid when > 0).
    bad_labels: `[]` int32, label entries outside `[0, K)` (ignored).
  """

  lo: jax.Array
  width: jax.Array
  hist: jax.Array
  pixels: jax.Array
  minimum: jax.Array
  maximum: jax.Array
  nonfinite: jax.Array
  bad_labels: jax.Array


def bracket_width(lo: np.ndarray, hi: np.ndarray, num_bins: int) -> np.ndarray:
  """Bin width for brackets `[lo, hi]`, kept positive and resolvable in float32."""
  lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
  return np.maximum((hi - lo) / num_bins, _narrowest(lo, hi)).astype(np.float32)


def _narrowest(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
  """The smallest bin width used: below it float32 cannot tell values in the bracket apart."""
  return np.maximum(np.abs(lo), np.abs(hi)) * 1e-6 + 1e-30


def tail_histogram(num_units: int, num_concepts: int, lo: np.ndarray, hi: np.ndarray,
                   num_bins: int = 2048) -> Stat:
  """Per-concept fine histograms of each unit over the bracket `[lo[u], hi[u]]`.

  Returns a `Stat`: update(state, acts [B, H, W, U], labels [B, H, W, D], raw=None) -> state,
  where `raw [B, h, w, U]` is the featuremap `acts` was upsampled from (optional; see above);
  merge adds counts; result is `tail_iou` (needs q: call it directly).
  """
  lo = np.asarray(lo, np.float32)
  hi = np.asarray(hi, np.float32)
  check_shape("lo", lo.shape, (num_units,))
  check_shape("hi", hi.shape, (num_units,))
  if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(hi >= lo)):
    bad = int(np.argmax(~(np.isfinite(lo) & np.isfinite(hi) & (hi >= lo))))
    raise ValueError(f"bracket of unit {bad} is [{lo[bad]}, {hi[bad]}]; need finite lo <= hi")
  if num_bins < 1 or num_concepts < 1:
    raise ValueError(f"need num_bins >= 1 and num_concepts >= 1, got {num_bins}, {num_concepts}")
  if num_concepts * num_units * (num_bins + 3) >= 2**31:
    raise ValueError(f"tail histogram of [{num_concepts}, {num_units}, {num_bins + 3}] cells "
                     "exceeds int32 indexing; use fewer bins")
  width = bracket_width(lo, hi, num_bins)

  def init() -> TailState:
    zeros = lambda *shape: jnp.zeros(shape, jnp.int32)
    return TailState(
        lo=jnp.asarray(lo), width=jnp.asarray(width),
        hist=zeros(num_concepts, num_units, num_bins + 3),
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
    return merge_tail(state, _batch_tally(state.lo, state.width, acts, labels, num_concepts,
                                          num_bins, raw))

  return Stat(init, update, merge_tail, None)


def _batch_tally(lo: jax.Array, width: jax.Array, acts: jax.Array, labels: jax.Array,
                 num_concepts: int, num_bins: int, raw: jax.Array | None) -> TailState:
  num_pixels = acts.shape[0] * acts.shape[1] * acts.shape[2]
  num_units = acts.shape[-1]
  acts = acts.reshape(num_pixels, num_units).astype(jnp.float32)
  labels = labels.reshape(num_pixels, -1)
  # Cells: 0 below lo (and NaN), 1 equal to lo, 1 + j for bin j, T + 2 above hi (and +inf).
  bins = jnp.clip(jnp.ceil((acts - lo) / width), 1, num_bins + 1) + 1
  cells = jnp.where(acts > lo, bins, jnp.where(acts == lo, 1, 0)).astype(jnp.int32)
  label_rows = _label_rows(labels, num_concepts)
  rows = jnp.concatenate([jnp.zeros((num_pixels, 1), jnp.int32), label_rows], axis=1)
  # Cell 0 is left empty and derived when read (`_with_cell_zero`): most pixels of a unit lie
  # below its tail, and their scatter-adds, spread over K rows of a large table, were the bulk
  # of the tally's time.
  hist = _histogram(cells, cells > 0, rows, num_concepts, num_bins + 2)
  pixels = jnp.zeros((num_concepts,), jnp.int32).at[label_rows.ravel()].add(1, mode="drop")
  bound = acts if raw is None else raw.reshape(-1, num_units).astype(jnp.float32)
  finite = jnp.isfinite(bound)
  return TailState(
      lo=lo, width=width, hist=hist,
      pixels=pixels.at[0].set(num_pixels),
      minimum=jnp.min(jnp.where(finite, bound, jnp.inf), axis=0),
      maximum=jnp.max(jnp.where(finite, bound, -jnp.inf), axis=0),
      nonfinite=jnp.sum(~finite, axis=0, dtype=jnp.int32),
      bad_labels=count_bad_labels(labels, num_concepts))


def merge_tail(a: TailState, b: TailState) -> TailState:
  """Adds the counts of two tallies over the same brackets (a's brackets are kept)."""
  return TailState(
      lo=a.lo, width=a.width, hist=a.hist + b.hist,
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


def _is_point_bin(width: np.ndarray, lo: np.ndarray, num_bins: int) -> np.ndarray:
  """True where bins are as narrow as `bracket_width` allows: their values count as one value."""
  return width <= 1.5 * _narrowest(lo, lo + width * num_bins)


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
  lo = np.asarray(state.lo, np.float64)
  width = np.asarray(state.width, np.float64)
  # The bin j with above[0, u, j + 1] <= target < above[0, u, j].
  j = np.sum(above[0, :, 1:] > target[:, None], axis=1)  # in [0, T + 1]
  upper = above[:, units, j + 1]  # [K, U] counts in bins above j
  lower = above[:, units, j]  # [K, U] counts in bins >= j
  in_point_mass = (j == 0) & (target < upper[0] + at_lo)
  inside = (j >= 1) & (j <= num_bins)
  point_bin = inside & _is_point_bin(width, lo, num_bins)
  resolved = inside | in_point_mass
  mass = np.maximum(lower[0] - upper[0], 1.0)
  frac = np.clip((target - upper[0]) / mass, 0.0, 1.0)  # share of the bin above the threshold
  # A single-valued bin is all on or all off: on when the position falls below its values.
  takes_bin = point_bin & (strictly_above >= lower[0])
  exact = in_point_mass | point_bin
  ic = np.where(exact, np.where(takes_bin, lower, upper), upper + frac * (lower - upper))
  active = np.where(exact, np.where(takes_bin, lower[0], upper[0]), target)
  edge_below = lo + width * np.maximum(j - 1, 0)
  thresholds = np.where(in_point_mass, lo, np.where(
      point_bin, np.where(takes_bin, edge_below, lo + width * j), lo + width * (j - frac)))
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
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """New brackets `(lo, hi)` and the mask of units that need another pass.

  A unit needs one when its quantile fell outside the bracket (the new bracket is the range
  between the exact extreme and the old bracket's end) or when its IoU bounds are wider than
  `tolerance` (the new bracket is the bin that holds the quantile, cut again into T bins).
  Other units keep their bracket, so a rerun reproduces their numbers exactly.
  """
  lo = np.asarray(state.lo, np.float64)
  width = np.asarray(state.width, np.float64)
  num_bins = state.hist.shape[-1] - 3
  hi = lo + width * num_bins
  mn, mx = np.asarray(state.minimum, np.float64), np.asarray(state.maximum, np.float64)
  spread = np.max(result.iou_high - result.iou_low, axis=1)
  j = result.bin
  below = ~result.resolved & (j == 0)
  over = ~result.resolved & (j > num_bins)
  point = _is_point_bin(width, lo, num_bins)
  loose = result.resolved & (spread > tolerance) & (j >= 1) & ~point
  new_lo, new_hi = lo.copy(), hi.copy()
  new_lo[below], new_hi[below] = mn[below], lo[below]
  new_lo[over], new_hi[over] = hi[over], mx[over]
  edge = lo + width * (j - 1)
  new_lo[loose], new_hi[loose] = edge[loose], edge[loose] + width[loose]
  return new_lo.astype(np.float32), new_hi.astype(np.float32), below | over | loose
