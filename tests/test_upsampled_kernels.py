"""The compiled loops that upsample as they count, against numpy on upsampled maps written out."""

import jax
import numpy as np
import pytest

from jaxdissect import thresholds, warmup
from jaxdissect.stats import tail, tail_cpu, upsampled_kernels
from jaxdissect.stats.conditional import _label_rows
from jaxdissect.stats.tail_bins import normalize_knots, segment_widths
from jaxdissect.upsample import taps

pytestmark = pytest.mark.skipif(not upsampled_kernels.AVAILABLE, reason="numba not installed")

K = 4


def _lerp(x: np.ndarray, axis: int, size: int) -> np.ndarray:
  """`jaxdissect.upsample`'s two-tap interpolation in numpy float32 (no fused multiply-add)."""
  i0, i1, f = taps(x.shape[axis], size)
  a, b = np.take(x, i0, axis=axis), np.take(x, i1, axis=axis)
  shape = [1] * x.ndim
  shape[axis] = size
  with np.errstate(invalid="ignore"):  # inf - inf: NaN, as in the loops
    return (a + (b - a) * f.reshape(shape)).astype(np.float32)


def _upsampled(raw: np.ndarray, size) -> np.ndarray:
  """`[B, h, w, U]` -> `[B, *size, U]`, rows then columns, as the loops compute it."""
  return _lerp(_lerp(raw, 1, size[0]), 2, size[1])


def _data(seed, shape=(5, 6, 7, 6), size=(24, 21)):
  rng = np.random.RandomState(seed)
  raw = rng.standard_normal(shape).astype(np.float32)
  raw[..., 1] = np.maximum(raw[..., 1], 0.0)  # a ReLU's ties at zero
  raw[..., 2] = np.round(raw[..., 2] * 2) / 2  # few distinct values: ties inside the bracket
  raw[..., 3] = np.float32(0.75)  # constant: every value on lo
  raw[0, 1, 1, 4], raw[1, 2, 3, 4], raw[2, 0, 1, 5] = np.nan, np.inf, -np.inf
  labels = rng.randint(0, K, size=(shape[0], *size, 2)).astype(np.int32)
  labels[0, :3, :3, 1] = labels[0, :3, :3, 0]  # repeated labels count once
  labels[1, 0, :4, 0] = [-1, K, K + 3, 0]  # bad labels are ignored
  return raw, labels


def _knots(units, segments, bins):
  starts = [0.0, 0.0, 0.5, 0.75, -0.3, 0.2][:units]
  knots = np.stack([np.linspace(lo, lo + 2.0, segments + 1) for lo in starts])
  knots[4, 1:3] = knots[4, 0]  # empty segments
  return normalize_knots(knots, bins)


@pytest.mark.parametrize("segments", [1, 4, 16])
def test_fused_count_equals_counting_the_written_out_upsampled_values(segments):
  raw, labels = _data(1)
  size, bins = labels.shape[1:3], 64
  knots = _knots(raw.shape[-1], segments, bins)
  widths = segment_widths(knots, bins)
  rows = np.asarray(_label_rows(jax.numpy.asarray(labels.reshape(-1, 2)), K))
  dense = np.zeros((K, raw.shape[-1], bins + 3), np.int32)
  values = np.ascontiguousarray(_upsampled(raw, size).reshape(-1, raw.shape[-1]).T)
  tail_cpu._count(dense, values, rows, knots, widths, slice(0, raw.shape[-1]))
  fused = np.zeros_like(dense)
  yi0, yi1, yf, _ = upsampled_kernels.axis_table(raw.shape[1], size[0])
  _, _, xf, xs = upsampled_kernels.axis_table(raw.shape[2], size[1])
  units = raw.shape[-1]
  least, most = np.full(units, np.inf, np.float32), np.full(units, -np.inf, np.float32)
  bad = np.zeros(units, np.int32)
  for part in (slice(0, 2), slice(2, units)):  # disjoint units, as threads take them
    upsampled_kernels.count_tail(fused, least, most, bad, raw, rows, knots, widths, yi0, yi1,
                                 yf, xf, xs, part.start, part.stop)
  np.testing.assert_array_equal(fused, dense)
  flat = raw.reshape(-1, units)
  finite = np.isfinite(flat)
  np.testing.assert_array_equal(least, np.where(finite, flat, np.inf).min(0))
  np.testing.assert_array_equal(most, np.where(finite, flat, -np.inf).max(0))
  np.testing.assert_array_equal(bad, (~finite).sum(0))
  assert fused[0, 3, 1] == values.shape[1]  # the constant unit: every value is lo
  assert fused.sum() > 0


def _stream(stat, update, raw, labels):
  """`stat` after `update(state, upsampled, labels, raw)` (jitted) on two images at a time."""
  update = jax.jit(update)
  acts = _upsampled(raw, labels.shape[1:3])
  state = stat.init()
  for i in range(0, len(raw), 2):
    state = update(state, acts[i:i + 2], labels[i:i + 2], raw[i:i + 2])
  return state


def _assert_same_state(a, b):
  for field, x, y in zip(a._fields, a, b, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=field)


def _tally(raw, labels, knots, bins, fused_path):
  stat = tail.tail_histogram(raw.shape[-1], K, knots, bins)

  def update(state, a, l, r):
    if fused_path:
      return stat.update(state, a, l, r)
    # The same raw bounds, the counts from the upsampled values written out.
    return stat.update(state, a, l, None)._replace(
        **dict(zip(("minimum", "maximum", "nonfinite"),
                   tail._bounds(state.minimum, state.maximum, state.nonfinite, r, r.shape[-1]))))

  return _stream(stat, update, raw, labels)


def test_the_tally_given_the_raw_map_counts_what_it_counts_without():
  raw, labels = _data(2)
  bins = 64
  knots = _knots(raw.shape[-1], 4, bins)
  fused = _tally(raw, labels, knots, bins, True)
  plain = _tally(raw, labels, knots, bins, False)
  _assert_same_state(fused, plain)


def test_fused_running_top_equals_a_partition_of_the_upsampled_values():
  raw, _ = _data(3, shape=(7, 5, 6, 6), size=(20, 17))
  raw = np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
  size = (20, 17)
  values = _upsampled(raw, size).reshape(-1, raw.shape[-1]).T
  yi0, yi1, yf, _ = upsampled_kernels.axis_table(raw.shape[1], size[0])
  _, _, xf, xs = upsampled_kernels.axis_table(raw.shape[2], size[1])
  for keep in (1, 37, 600, values.shape[1]):
    kept = np.full((raw.shape[-1], keep), -np.inf, np.float32)
    count = np.zeros(raw.shape[-1], np.int64)
    for batch in np.array_split(raw, 3):  # folded batch by batch, as the warmup streams them
      upsampled_kernels.largest(kept, count, np.ascontiguousarray(batch), yi0, yi1, yf, xf, xs, 0, raw.shape[-1])
    want = np.sort(values, axis=1)[:, ::-1][:, :keep]
    np.testing.assert_array_equal(np.sort(kept, axis=1)[:, ::-1], want)
    np.testing.assert_array_equal(count, keep)


def test_fused_warmup_brackets_match_the_upsampling_warmup(monkeypatch):
  rng = np.random.RandomState(4)
  layers = {"a": (4, 4, 6), "b": (8, 8, 3)}
  batches = [{name: np.maximum(rng.standard_normal((10, h, w, u)), 0).astype(np.float32)
              for name, (h, w, u) in layers.items()} for _ in range(2)]
  rule = thresholds.TopQuantile(0.02)
  fused = warmup.host_brackets(rule, layers, (32, 32), batches, rows=20)
  monkeypatch.setattr(upsampled_kernels, "fuses", lambda *a: False)
  plain = warmup.host_brackets(rule, layers, (32, 32), batches, rows=20)
  for name in layers:
    np.testing.assert_allclose(fused[name], plain[name], rtol=1e-6, atol=1e-6)


def test_shrinking_is_not_fused():
  assert not upsampled_kernels.fuses((2, 64, 64, 8), (32, 32))
  assert upsampled_kernels.fuses((2, 8, 8, 8), (32, 32))
  assert upsampled_kernels.fuses((2, 32, 32, 8), (32, 32))


def _conditional(raw, labels, edges, fused_path):
  from jaxdissect.stats import conditional  # pylint: disable=g-import-not-at-top
  stat = conditional.conditional_histogram(raw.shape[-1], K, edges)

  def update(state, a, l, r):
    return stat.update(state, a, l, r if fused_path else None)

  return _stream(stat, update, raw, labels)


def test_fused_level_counts_equal_the_sorting_kernel_on_written_out_values():
  raw, labels = _data(5)
  rng = np.random.RandomState(5)
  edges = np.sort(rng.standard_normal((raw.shape[-1], 9)), axis=1).astype(np.float32)
  edges[1, :4] = 0.0  # ties on a ReLU's zero
  edges[2, 3:6] = 0.5  # levels on values that occur
  edges[3, :] = 0.75  # every value on every level
  edges = np.maximum.accumulate(edges, axis=1)
  fused = _conditional(raw, labels, edges, True)
  plain = _conditional(raw, labels, edges, False)
  _assert_same_state(fused, plain)
  assert np.asarray(fused.nonfinite)[4:].sum() > 0 and np.asarray(fused.above).sum() > 0


def test_fused_sample_equals_the_upsampled_values_at_its_positions():
  raw, _ = _data(6, shape=(3, 5, 6, 6), size=(20, 17))
  size = (20, 17)
  values = _upsampled(raw, size).reshape(-1, raw.shape[-1]).T
  positions = np.sort(np.random.RandomState(6).choice(values.shape[1], 300, replace=False))
  yi0, yi1, yf, _ = upsampled_kernels.axis_table(raw.shape[1], size[0])
  xi0, xi1, xf, _ = upsampled_kernels.axis_table(raw.shape[2], size[1])
  out = np.empty((raw.shape[-1], len(positions)), np.float32)
  upsampled_kernels.gather(out, raw, positions, yi0,
                           yi1, yf, xi0, xi1, xf, 0, raw.shape[-1])
  np.testing.assert_array_equal(out, values[:, positions])


def test_fused_iqr_warmup_grid_matches_the_upsampling_warmup(monkeypatch):
  rng = np.random.RandomState(7)
  layers = {"a": (4, 4, 5), "b": (8, 8, 3)}
  batches = [{name: rng.standard_normal((6, h, w, u)).astype(np.float32)
              for name, (h, w, u) in layers.items()} for _ in range(3)]
  rule = thresholds.IqrGrid(cap=5000)  # a sample: positions spread over the batches
  fused = warmup.host_brackets(rule, layers, (16, 16), batches, rows=18)
  monkeypatch.setattr(upsampled_kernels, "fuses", lambda *a: False)
  plain = warmup.host_brackets(rule, layers, (16, 16), batches, rows=18)
  for name in layers:
    np.testing.assert_allclose(fused[name], plain[name], rtol=1e-6, atol=1e-6)


def test_fused_level_counts_are_exact_on_values_that_sit_on_levels():
  """Levels on a grid that bucket bounds meet and values that land on them: the bucket table
  may only shorten the search, never move a value across a level."""
  raw, labels = _data(8)
  raw = np.round(np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0) * 8) / 8  # on the grid
  edges = np.tile(np.linspace(-1.0, 1.0, 17, dtype=np.float32), (raw.shape[-1], 1))
  edges[0] = np.linspace(-1.0, 1.0, 17, dtype=np.float32) * np.float32(1 / 3)  # off the grid
  fused = _conditional(raw, labels, edges, True)
  plain = _conditional(raw, labels, edges, False)
  _assert_same_state(fused, plain)
