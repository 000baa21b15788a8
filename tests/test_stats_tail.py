"""The tail histogram against exact numpy quantiles and IoU, with and without ties."""

import jax
import numpy as np
import pytest

from jaxdissect.stats import tail

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


def _tally(acts, labels, lo, hi, bins, batches=4):
  stat = tail.tail_histogram(acts.shape[-1], K, lo, hi, bins)
  update = jax.jit(stat.update)
  state = stat.init()
  for a, l in zip(np.array_split(acts, batches), np.array_split(labels, batches)):
    state = update(state, a, l)
  return state


def _refined(acts, labels, q, bins, tolerance=1e-4, passes=6):
  """Brackets from a tenth of the data, refined until every unit is within tolerance."""
  units = acts.shape[-1]
  warm = acts[: len(acts) // 10].reshape(-1, units)
  lo = np.quantile(warm, 1 - 3 * q, axis=0).astype(np.float32)
  hi = np.maximum(np.quantile(warm, 1 - q / 3, axis=0), lo).astype(np.float32)
  for _ in range(passes):
    state = _tally(acts, labels, lo, hi, bins)
    result = tail.tail_iou(state, q)
    lo, hi, redo = tail.refine_brackets(state, result, tolerance)
    if not redo.any():
      return result
  raise AssertionError("brackets did not converge")


@pytest.mark.parametrize("q", [0.01, 0.05])
def test_continuous_values_match_exact_iou_within_bounds(q):
  acts, labels = _data(0)
  exact_t, exact_iou = _exact(acts, labels, q)
  result = _refined(acts, labels, q, bins=512)
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
  lo, hi = np.full(5, 1.0, np.float32), np.full(5, 3.0, np.float32)
  one = _tally(acts, labels, lo, hi, 64, batches=1)
  stat = tail.tail_histogram(5, K, lo, hi, 64)
  halves = [stat.update(stat.init(), acts[s], labels[s]) for s in (slice(0, 13), slice(13, None))]
  merged = tail.merge_tail(*halves)
  for a, b in zip(one, merged):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_bracket_that_misses_is_reported_and_refined():
  acts, labels = _data(3)
  q = 0.01
  high = np.full(5, 10.0, np.float32)  # far above every quantile
  state = _tally(acts, labels, high, high + 1, 32)
  result = tail.tail_iou(state, q)
  assert not result.resolved.any()
  lo, hi, redo = tail.refine_brackets(state, result, 1e-3)
  assert redo.all()
  exact_t, _ = _exact(acts, labels, q)
  assert np.all(lo <= exact_t) and np.all(exact_t <= hi)


def test_coarse_bins_give_wide_bounds_that_ask_for_refinement():
  acts, labels = _data(4)
  lo, hi = np.full(5, -1.0, np.float32), np.full(5, 6.0, np.float32)
  result = tail.tail_iou(_tally(acts, labels, lo, hi, 4), 0.01)
  state = _tally(acts, labels, lo, hi, 4)
  _, _, redo = tail.refine_brackets(state, result, 1e-3)
  assert result.resolved.all() and redo.any()
  assert np.max(result.iou_high - result.iou_low) > 1e-2


def test_bad_brackets_are_refused():
  with pytest.raises(ValueError, match="unit 1"):
    tail.tail_histogram(2, K, np.array([0.0, 2.0]), np.array([1.0, 1.0]))
  with pytest.raises(ValueError, match="shape"):
    tail.tail_histogram(3, K, np.zeros(2), np.ones(2))
