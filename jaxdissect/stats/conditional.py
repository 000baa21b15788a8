"""Per-concept distributions of each unit's activation, tallied on a fixed grid of levels.

GAN Dissection picks each unit's threshold by maximising the information quality ratio between
"activation > t" and "pixel has concept c" over a grid of candidate levels t (the unit's
unconditional quantiles at 1 - logspace(-3, 0, 100)). That needs, for every concept c, the
fraction of c's pixels above each candidate level. The original keeps one quantile sketch per
concept; here the levels are fixed up front, so the exact answer is a table of integer counts
`above[c, u, t] = #{pixels having c : act_u > edges[u, t]}` that merges by addition and is
identical however the stream is batched or sharded.

Rows are indexed by label value: row c (1 <= c < K) is concept c, and row 0 (label value 0 means
"no concept") holds the unconditional distribution over all pixels, so rows line up with the
columns of `iou_tally`. A pixel counts once per concept even when several label channels carry it.

Counting uses each activation's bin (the number of edges strictly below it, a per-unit
`searchsorted`) and one scatter-add per label channel into a `[K, U, T + 1]` histogram, whose
reverse cumulative sum is `above`. Work is O(B·H·W·U·(D + 1)) per batch, independent of K and T,
where a multi-hot-labels matmul would cost O(B·H·W·K·U·T). Non-finite activations are counted in
`nonfinite` and left out of that unit's distribution; label values outside `[0, K)` are counted in
`bad_labels` and ignored. Counts are int32 (at most 2**31 - 1 pixels per tally).
On the CPU the same counts come from numpy code that sorts each label row's values once and
looks the levels up in them (`conditional_cpu`), about 4x faster than XLA's scatter there.

Accuracy: the CDF is exact at the grid points; quantiles between grid points are linear
interpolations, so their error is bounded by the local grid spacing.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.errors import check_shape
from jaxdissect.stats import conditional_cpu, upsampled_kernels
from jaxdissect.stats.backend import numpy_on_cpu
from jaxdissect.stats.base import Stat
from jaxdissect.stats.iou import check_labels, count_bad_labels, plogp
from jaxdissect.stats.quantile_keys import to_key


class ConditionalState(NamedTuple):
  """Tallies on a grid of T levels per unit (U units, K label values).

  Attributes:
    edges: `[U, T]` float32, non-decreasing per unit (constant configuration).
    above: `[K, U, T]` int32, pixels of row c whose activation of u is > edges[u, t].
    count: `[K, U]` int32, pixels of row c with a finite activation of u.
    pixels: `[K]` int32, pixels of row c (row 0: all pixels).
    nonfinite: `[U]` int32, non-finite activations seen (left out).
    bad_labels: `[]` int32, label entries outside `[0, K)` (ignored).
    mismatch: `[]` int32, merges of states with different edges that happened under a trace
      (where they cannot raise); results refuse to read a state with mismatch > 0.
  """

  edges: jax.Array
  above: jax.Array
  count: jax.Array
  pixels: jax.Array
  nonfinite: jax.Array
  bad_labels: jax.Array
  mismatch: jax.Array


def _is_concrete(x: jax.Array) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_edges(edges: jax.Array, num_units: int) -> None:
  """Raises ValueError unless `edges` is `[num_units, T>=1]`, NaN-free and non-decreasing."""
  if edges.ndim != 2 or edges.shape[0] != num_units or edges.shape[1] < 1:
    raise ValueError(f"edges has shape {list(edges.shape)}, expected [{num_units}, T] with T >= 1")
  if _is_concrete(edges):
    e = np.asarray(edges)
    if np.isnan(e).any():
      where = np.argwhere(np.isnan(e))[0].tolist()
      raise ValueError(f"edges contains NaN at (unit, level) {where}")
    decreasing = np.argwhere(np.diff(e, axis=1) < 0)
    if decreasing.size:
      u, t = decreasing[0].tolist()
      raise ValueError(
          f"edges must be non-decreasing per unit; unit {u} has edges[{t}]={e[u, t]} > "
          f"edges[{t + 1}]={e[u, t + 1]}"
      )


def _label_rows(labels: jax.Array, num_concepts: int) -> jax.Array:
  """`[P, D]` labels -> `[P, D]` rows to count (the label value), or K (none, bad or repeated).

  The sentinel is K rather than -1 because scatters wrap negative indices around.
  """
  keep = (labels >= 1) & (labels < num_concepts)
  for d in range(1, labels.shape[1]):
    repeated = jnp.any(labels[:, :d] == labels[:, d : d + 1], axis=1)
    keep = keep.at[:, d].set(keep[:, d] & ~repeated)
  return jnp.where(keep, labels.astype(jnp.int32), num_concepts)


def _histogram(
    bins: jax.Array, finite: jax.Array, rows: jax.Array, num_concepts: int, num_levels: int
) -> jax.Array:
  """Bins `[P, U]`, finite `[P, U]`, rows `[P, R]` -> `[K, U, T + 1]` int32 pixel histogram."""
  num_units = bins.shape[1]
  size = num_concepts * num_units * (num_levels + 1)
  cell = jnp.arange(num_units, dtype=jnp.int32) * (num_levels + 1) + bins  # [P, U]
  hist = jnp.zeros((size,), jnp.int32)
  for r in range(rows.shape[1]):
    row = rows[:, r : r + 1]
    valid = (row < num_concepts) & finite
    index = jnp.where(valid, row * (num_units * (num_levels + 1)) + cell, size)
    hist = hist.at[index.ravel()].add(1, mode="drop")
  return hist.reshape(num_concepts, num_units, num_levels + 1)


def _add_batch(state: ConditionalState, acts: jax.Array, labels: jax.Array,
               num_concepts: int, raw: jax.Array | None = None) -> ConditionalState:
  """`state` with one batch (acts `[B, H, W, U]`, labels `[B, H, W, D]`) counted in, in place.
  Given `raw`, the featuremap that `acts` is `upsample(raw)` of, a CPU counts from it instead
  (`upsampled_kernels`: the upsampled maps are never written out; XLA drops them)."""
  num_units = state.edges.shape[0]
  size = acts.shape[1:3]
  num_pixels = acts.shape[0] * acts.shape[1] * acts.shape[2]
  acts = acts.reshape(num_pixels, num_units).astype(jnp.float32)
  labels = labels.reshape(num_pixels, -1)
  rows = _label_rows(labels, num_concepts)
  if raw is not None and upsampled_kernels.fuses(raw.shape, size):
    host = functools.partial(conditional_cpu.host_count_fused, size=size)
    above, count, pixels, nonfinite = numpy_on_cpu(
        lambda a, c, p, n, values, raw, rows, e: host(a, c, p, n, raw, rows, e),
        lambda a, c, p, n, values, raw, rows, e: _device_count_all(a, c, p, n, values, rows, e),
        state.above, state.count, state.pixels, state.nonfinite, acts, raw, rows, state.edges)
  else:
    above, count, pixels = numpy_on_cpu(_host_count, _device_count, state.above, state.count,
                                        state.pixels, acts, rows, state.edges)
    nonfinite = state.nonfinite + jnp.sum(~jnp.isfinite(acts), axis=0, dtype=jnp.int32)
  return state._replace(above=above, count=count, pixels=pixels, nonfinite=nonfinite,
                        bad_labels=state.bad_labels + count_bad_labels(labels, num_concepts))


def _device_count_all(above, count, pixels, nonfinite, acts, rows, edges):
  """`_device_count` and the non-finite values of `acts [P, U]` added to `nonfinite`."""
  return (*_device_count(above, count, pixels, acts, rows, edges),
          nonfinite + jnp.sum(~jnp.isfinite(acts), axis=0, dtype=jnp.int32))


def _host_count(above, count, pixels, acts, rows, edges):
  """`conditional_cpu.host_count` on order-preserving keys, units major (zeros made +0.0, so
  key order is float order; non-finite values as -inf, below every level)."""
  keys = lambda x: to_key(jnp.where(x == 0, 0.0, x))
  values = jnp.where(jnp.isfinite(acts), acts, -jnp.inf).T
  return conditional_cpu.host_count(above, count, pixels, keys(values), rows, keys(edges))


def _device_count(above, count, pixels, acts, rows, edges):
  """The counting of `conditional_cpu.host_count` as XLA scatter-adds."""
  num_concepts, _, num_levels = above.shape
  # bins[p, u] = number of edges[u] strictly below acts[p, u], in [0, T].
  bins = jax.vmap(jnp.searchsorted, in_axes=(0, 1), out_axes=1)(edges, acts).astype(jnp.int32)
  hist = _histogram(bins, jnp.isfinite(acts), rows_with_all(rows), num_concepts, num_levels)
  tail = jnp.cumsum(hist[..., ::-1], axis=-1)[..., ::-1]  # tail[..., t] = sum_{b >= t}
  return above + tail[..., 1:], count + tail[..., 0], add_row_pixels(pixels, rows)


def add_row_pixels(pixels: jax.Array, rows: jax.Array) -> jax.Array:
  """`pixels [K]` plus the pixels of each label row in `rows [P, D]` (K: none; row 0: all)."""
  return pixels.at[rows.ravel()].add(1, mode="drop").at[0].add(rows.shape[0])


def rows_with_all(rows: jax.Array) -> jax.Array:
  """`[P, D]` label rows with row 0 (all pixels) prepended: `[P, 1 + D]`."""
  return jnp.concatenate([jnp.zeros((rows.shape[0], 1), jnp.int32), rows], axis=1)


def _add(a: ConditionalState, b: ConditionalState) -> ConditionalState:
  """Sums the counts of two states, keeping a's edges."""
  return jax.tree.map(jnp.add, a, b)._replace(edges=a.edges)


def conditional_histogram(num_units: int, num_concepts: int, edges: jax.Array) -> Stat:
  """Per-concept counts of activations above each unit's grid of levels.

  Args:
    num_units: U.
    num_concepts: K, label values in `[0, K)`; 0 means none (its row is unconditional).
    edges: `[U, T]` non-decreasing levels per unit, e.g. the unit's unconditional quantiles at
      `1 - logspace(-3, 0, 100)`. Stored in the state; merge checks that both sides agree.

  Returns:
    A `Stat`: update(state, acts [B, H, W, U], labels [B, H, W, D]) -> state;
    result(state) -> `conditional_cdf(state)`.
  """
  edges = jnp.asarray(edges, jnp.float32)
  _check_edges(edges, num_units)
  num_levels = edges.shape[1]
  if num_concepts < 1:
    raise ValueError(f"conditional_histogram needs num_concepts >= 1, got {num_concepts}")
  if num_concepts * num_units * (num_levels + 1) >= 2**31:
    raise ValueError(
        f"conditional_histogram of [{num_concepts}, {num_units}, {num_levels + 1}] cells exceeds "
        "int32 indexing; split the units into groups"
    )

  def init() -> ConditionalState:
    zeros = lambda *shape: jnp.zeros(shape, jnp.int32)
    return ConditionalState(
        edges=edges,
        above=zeros(num_concepts, num_units, num_levels),
        count=zeros(num_concepts, num_units),
        pixels=zeros(num_concepts),
        nonfinite=zeros(num_units),
        bad_labels=zeros(),
        mismatch=zeros(),
    )

  def update(state: ConditionalState, acts: jax.Array, labels: jax.Array,
             raw: jax.Array | None = None) -> ConditionalState:
    acts, labels = jnp.asarray(acts), jnp.asarray(labels)
    check_shape("acts", acts.shape, (None, None, None, num_units))
    check_labels(labels, acts.shape[:3])
    if raw is not None:
      check_shape("raw", raw.shape, (acts.shape[0], None, None, num_units))
    return _add_batch(state, acts, labels, num_concepts, raw)

  return Stat(init, update, merge_conditional, conditional_cdf)


def merge_conditional(a: ConditionalState, b: ConditionalState) -> ConditionalState:
  """Adds two states; raises ValueError if their edges differ (recorded in `mismatch` if traced)."""
  differ = jnp.any(a.edges != b.edges)
  if _is_concrete(differ) and bool(differ):
    raise ValueError("cannot merge conditional histograms built on different edges")
  summed = _add(a, b)
  return summed._replace(mismatch=summed.mismatch + differ.astype(jnp.int32))


def _checked(state: ConditionalState) -> ConditionalState:
  if int(state.mismatch) > 0:
    raise ValueError(
        f"state merged {int(state.mismatch)} time(s) from different edges; its counts are invalid"
    )
  return state


def conditional_cdf(state: ConditionalState) -> np.ndarray:
  """`[K, U, T]` float64 fraction of row c's pixels with act_u <= edges[u, t].

  Row 0 is unconditional. Rows with no pixels read as 1 (nothing above any level).
  """
  state = _checked(state)
  above = np.asarray(state.above, np.float64)
  count = np.asarray(state.count, np.float64)[..., None]
  return 1.0 - np.where(count > 0, above / np.maximum(count, 1.0), 0.0)


def conditional_quantiles(state: ConditionalState, q: float | np.ndarray) -> np.ndarray:
  """Quantiles `[K, U]` (or `[Q, K, U]` for `q` of shape `[Q]`) from the tallied CDF.

  Inverts the piecewise-linear CDF through the points (edges[u, t], cdf[c, u, t]): exact at grid
  points, linear in between, so accuracy is limited to the grid spacing. Levels whose CDF lies
  below the first grid point return edges[u, 0]; above the last, edges[u, T - 1].
  """
  q_arr = np.asarray(q, np.float64)
  if q_arr.ndim > 1 or np.any((q_arr < 0) | (q_arr > 1)):
    raise ValueError(f"q must be a scalar or [Q] array in [0, 1], got {q!r}")
  cdf = conditional_cdf(state)  # [K, U, T]
  edges = np.broadcast_to(np.asarray(state.edges, np.float64), cdf.shape)
  qs = q_arr.reshape(-1, 1, 1, 1)  # [Q, 1, 1, 1]
  # j = first grid index with cdf >= q, so that cdf[j - 1] < q <= cdf[j].
  j = np.sum(cdf[None] < qs, axis=-1, keepdims=True)  # [Q, K, U, 1]
  hi = np.minimum(j, cdf.shape[-1] - 1)
  lo = np.maximum(j - 1, 0)
  take = lambda x, i: np.take_along_axis(np.broadcast_to(x, (len(qs), *x.shape)), i, axis=-1)
  f_lo, f_hi = take(cdf, lo), take(cdf, hi)
  x_lo, x_hi = take(edges, lo), take(edges, hi)
  with np.errstate(divide="ignore", invalid="ignore"):
    frac = np.where(f_hi > f_lo, (qs - f_lo) / (f_hi - f_lo), 1.0)
  out = (x_lo + np.clip(frac, 0.0, 1.0) * (x_hi - x_lo))[..., 0]
  return out if q_arr.ndim else out[0]


class IqrThresholds(NamedTuple):
  """Result of `iqr_thresholds` (U units, K label values, T levels).

  Attributes:
    thresholds: `[U]` the chosen level per unit (edges[u, level_index[u]]).
    labels: `[U]` int, the label whose best IQR is largest.
    iqr: `[U]` that label's IQR at that level.
    level_index: `[U]` int grid index of the chosen level.
    (When no label has an admissible level, label and iqr are 0 and level_index is 0.)
    max_iqr: `[K, U]` best IQR of each label over the admissible levels (row 0 is 0).
    best_index: `[K, U]` int grid index achieving `max_iqr`.
  """

  thresholds: np.ndarray
  labels: np.ndarray
  iqr: np.ndarray
  level_index: np.ndarray
  max_iqr: np.ndarray
  best_index: np.ndarray


def _level_iqr(truth: float, pred: np.ndarray, cond: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """IQR and agreement `[U, T]` of "act > level" vs one label, from probabilities.

  truth = P(label), pred = P(act > level), cond = P(act > level | label).
  """
  isect = cond * truth
  cells = [isect, pred - isect, truth - isect, 1.0 - (truth + pred - isect)]
  p11, p10, p01, p00 = (np.clip(c, 0.0, 1.0) for c in cells)
  joint = plogp(p11) + plogp(p10) + plogp(p01) + plogp(p00)
  h_on = plogp(p11 + p10) + plogp(p01 + p00)
  h_has = plogp(p11 + p01) + plogp(p10 + p00)
  mi = np.maximum(h_on + h_has - joint, 0.0)
  with np.errstate(divide="ignore", invalid="ignore"):
    iqr = np.nan_to_num(mi / np.maximum(joint, 0.0), nan=0.0, posinf=0.0, neginf=0.0)
  return iqr, p11 + p00


def iqr_thresholds(
    state: ConditionalState,
    min_label_frac: float = 1e-3,
    min_agreement: float = 0.8,
    min_level: float = 0.0,
) -> IqrThresholds:
  """GAN Dissection's IQR-maximising threshold per unit, over the state's grid of levels.

  For each label c >= 1 and level t: truth = pixels[c] / pixels[0], pred = P(act > t),
  isect = P(act > t | c) * truth, and the 2x2 table [[isect, pred - isect],
  [truth - isect, 1 - union]] (clamped to [0, 1]) gives IQR = MI / JE as in `iou.iqr_scores`.
  Only levels with agreement (isect + p00) > `min_agreement` and level > `min_level` are
  admissible; labels rarer than `min_label_frac` score 0. Each label's best level is kept, and
  the unit takes the level of its best label.

  Differences from the original: pred is unconditional (the original conditions on images where
  the label's category occurs, which this state does not tally), and admissibility is decided on
  the state's own grid, so choose `edges` as the unit's quantiles at 1 - logspace(-3, 0, 100) to
  match it.
  """
  state = _checked(state)
  above = np.asarray(state.above, np.float64)
  count = np.maximum(np.asarray(state.count, np.float64), 1.0)[..., None]
  pixels = np.asarray(state.pixels, np.float64)
  edges = np.asarray(state.edges, np.float64)
  num_concepts, num_units, _ = above.shape
  pred = above[0] / count[0]
  admissible = edges > min_level  # [U, T]
  max_iqr = np.zeros((num_concepts, num_units))
  best_index = np.zeros((num_concepts, num_units), np.int64)
  for c in range(1, num_concepts):
    truth = pixels[c] / max(pixels[0], 1.0)
    if truth < min_label_frac or truth == 0:
      continue
    iqr, agreement = _level_iqr(truth, pred, above[c] / count[c])
    iqr = np.where(admissible & (agreement > min_agreement), iqr, -1.0)
    best_index[c] = np.argmax(iqr, axis=1)
    max_iqr[c] = np.maximum(np.take_along_axis(iqr, best_index[c][:, None], axis=1)[:, 0], 0.0)
  labels = np.argmax(max_iqr, axis=0)
  units = np.arange(num_units)
  level_index = best_index[labels, units]
  return IqrThresholds(
      thresholds=edges[units, level_index],
      labels=labels,
      iqr=max_iqr[labels, units],
      level_index=level_index,
      max_iqr=max_iqr,
      best_index=best_index,
  )
