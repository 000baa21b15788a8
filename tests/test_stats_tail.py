"""The tail histogram against exact numpy quantiles and IoU, with and without ties."""

import jax
import numpy as np
import pytest

from jaxdissect.stats import tail
from jaxdissect.stats.tail_bins import uniform_knots

K = 4  # label values 0..3 (0 = none)


def _exact(acts, labels, q):
  """numpy's (1 - q) quantile per unit and the IoU `[U, K]` of "act > it" with each label."""
  flat = acts.reshape(-1, acts.shape[-1]).astype(np.float64)
  lab = labels.reshape(-1, labels.shape[-1])
  t = np.quantile(flat.astype(np.float32), 1 - q, axis=0)
  on = flat > t
  iou = np.zeros((flat.shape[1], K))
  for c in range(1, K):
    has = np.any(lab == c, axis=1)[:, None]
    iou[:, c] = (on & has).sum(0) / np.maximum((on | has).sum(0), 1)
  return t, iou


def _data(seed, shape=(40, 16, 16, 5), ties=False):
  rng = np.random.RandomState(seed)
  acts = rng.standard_normal(shape).astype(np.float32)
  # Units respond to label 1 so that IoU is far from zero.
  labels = rng.randint(0, K, size=shape[:3] + (2,)).astype(np.int32)
  acts[..., 0] += 2.0 * (labels[..., 0] == 1)
  acts[..., 1] += 3.0 * (labels[..., 1] == 2)
  if ties:
    acts = np.maximum(acts, 0.0)
    acts[..., 2] = np.where(acts[..., 2] > 2.4, acts[..., 2], 0.0)  # 99% zeros: quantile on 0
    acts[..., 3] = np.round(acts[..., 3] * 2) / 2  # a few distinct values
  return acts, labels


def _tally(acts, labels, knots, bins, batches=4):
  stat = tail.tail_histogram(acts.shape[-1], K, knots, bins)
  update = jax.jit(stat.update)
  state = stat.init()
  for a, l in zip(np.array_split(acts, batches), np.array_split(labels, batches)):
    state = update(state, a, l)
  return state


def _refined(acts, labels, q, bins, tolerance=1e-4, passes=6, segments=1):
  """Brackets from a tenth of the data, refined until every unit is within tolerance."""
  units = acts.shape[-1]
  warm = acts[: len(acts) // 10].reshape(-1, units)
  lo = np.quantile(warm, 1 - 3 * q, axis=0).astype(np.float32)
  hi = np.maximum(np.quantile(warm, 1 - q / 3, axis=0), lo).astype(np.float32)
  knots = uniform_knots(lo, hi, segments)
  for _ in range(passes):
    state = _tally(acts, labels, knots, bins)
    result = tail.tail_iou(state, q)
    knots, redo = tail.refine_brackets(state, result, tolerance)
    if not redo.any():
      return result
  raise AssertionError("brackets did not converge")


@pytest.mark.parametrize("q,segments", [(0.01, 1), (0.05, 1), (0.01, 8)])
def test_continuous_values_match_exact_iou_within_bounds(q, segments):
  acts, labels = _data(0)
  exact_t, exact_iou = _exact(acts, labels, q)
  result = _refined(acts, labels, q, bins=512, segments=segments)
  assert result.resolved.all()
  # Between two data values any threshold is as good: both must switch on the same pixels.
  flat = acts.reshape(-1, acts.shape[-1])
  np.testing.assert_array_equal((flat > result.thresholds).sum(0), (flat > exact_t).sum(0))
  assert np.all(result.iou_low <= exact_iou + 1e-9) and np.all(exact_iou <= result.iou_high + 1e-9)
  assert np.max(np.abs(result.iou - exact_iou)) < 1e-3
  assert exact_iou[0, 1] > 2 * exact_iou[4, 1] and exact_iou[1, 2] > 2 * exact_iou[4, 2]


def test_ties_and_point_masses_are_exact():
  acts, labels = _data(1, ties=True)
  exact_t, exact_iou = _exact(acts, labels, 0.01)
  result = _refined(acts, labels, 0.01, bins=256)
  np.testing.assert_allclose(result.iou, exact_iou, atol=1e-9)
  assert result.thresholds[2] == exact_t[2] == 0.0


def test_split_and_merged_tallies_are_identical():
  acts, labels = _data(2)
  knots = uniform_knots(np.full(5, 1.0), np.full(5, 3.0), 4)
  one = _tally(acts, labels, knots, 64, batches=1)
  stat = tail.tail_histogram(5, K, knots, 64)
  halves = [stat.update(stat.init(), acts[s], labels[s]) for s in (slice(0, 13), slice(13, None))]
  merged = tail.merge_tail(*halves)
  for a, b in zip(one, merged):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_bracket_that_misses_is_reported_and_refined():
  acts, labels = _data(3)
  q = 0.01
  high = np.full(5, 10.0, np.float32)  # far above every quantile
  state = _tally(acts, labels, uniform_knots(high, high + 1), 32)
  result = tail.tail_iou(state, q)
  assert not result.resolved.any()
  knots, redo = tail.refine_brackets(state, result, 1e-3)
  assert redo.all()
  exact_t, _ = _exact(acts, labels, q)
  assert np.all(knots[:, 0] <= exact_t) and np.all(exact_t <= knots[:, -1])


def test_coarse_bins_give_wide_bounds_that_ask_for_refinement():
  acts, labels = _data(4)
  knots = uniform_knots(np.full(5, -1.0), np.full(5, 6.0))
  state = _tally(acts, labels, knots, 4)
  result = tail.tail_iou(state, 0.01)
  _, redo = tail.refine_brackets(state, result, 1e-3)
  assert result.resolved.all() and redo.any()
  assert np.max(result.iou_high - result.iou_low) > 1e-2


def test_bad_brackets_are_refused():
  with pytest.raises(ValueError, match="unit 1"):
    tail.tail_histogram(2, K, np.array([[0.0, 1.0], [2.0, 1.0]]))
  with pytest.raises(ValueError, match="unit 0"):
    tail.tail_histogram(2, K, np.array([[0.0, np.nan], [0.0, 1.0]]))
  with pytest.raises(ValueError, match="shape"):
    tail.tail_histogram(3, K, np.zeros((2, 2)))
  with pytest.raises(ValueError, match="divide"):
    tail.tail_histogram(2, K, np.tile(np.linspace(0, 1, 4), (2, 1)), num_bins=64)


def _device_path(monkeypatch):
  """Makes the tally use its XLA scatter on every backend (the CPU kernel's reference)."""
  monkeypatch.setattr(tail, "numpy_on_cpu", lambda host, device, *args: device(*args))


@pytest.mark.parametrize("segments", [1, 4, 16])
def test_cpu_kernel_writes_the_state_of_the_xla_scatter(monkeypatch, segments):
  acts, labels = _data(5, shape=(6, 24, 24, 7), ties=True)
  acts[0, 0, 0, 4], acts[1, 2, 3, 4], acts[2, 0, 1, 5] = np.nan, np.inf, -np.inf
  acts[..., 6] = np.float32(1.25)  # every value on lo
  labels[0, :3, :3, 1] = labels[0, :3, :3, 0]  # repeated labels count once
  labels[1, 0, :4, 0] = [-1, K, K + 3, 0]  # bad labels are ignored
  knots = np.stack([np.linspace(lo, lo + 2.0, segments + 1) for lo in
                    (0.0, 0.5, 0.0, 0.0, -0.3, 1.0, 1.25)]).astype(np.float32)
  knots[1, 1:3] = knots[1, 0]  # empty segments
  host = _tally(acts, labels, knots, 64)
  _device_path(monkeypatch)
  device = _tally(acts, labels, knots, 64)
  for field, a, b in zip(host._fields, host, device):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=field)
  assert np.asarray(host.hist)[1:, :, 1].sum() == 0  # concept rows never count lo


def test_cells_match_an_independent_search():
  rng = np.random.RandomState(6)
  from jaxdissect.stats import tail_bins  # pylint: disable=g-import-not-at-top
  knots = tail_bins.normalize_knots(np.sort(rng.standard_normal((9, 7)), axis=1), 96)
  widths = tail_bins.segment_widths(knots, 96)
  unit = rng.randint(0, 9, 5000)
  values = rng.standard_normal(5000).astype(np.float32) * 1.5
  values[:9] = knots[np.arange(9), 3]  # on a knot: the segment below
  keep = values > knots[unit, 0]
  unit, values = unit[keep], values[keep]
  cells = tail_bins.cells_above(np, values, unit, knots, widths, 96)
  edges, _ = tail_bins.bin_edges(knots, 96)
  for u, v, c in zip(unit, values, cells):
    if v > knots[u, -1]:
      assert c == 98
      continue
    j = c - 1  # bin j holds (edges[j - 1], edges[j]], up to float32 rounding
    assert 1 <= j <= 96
    tol = 4e-7 * max(1.0, abs(v))
    assert edges[u, j - 1] - tol <= v <= edges[u, j] + tol, (u, v, j)
