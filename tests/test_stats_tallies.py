"""Count-based statistics (top-k, IoU/IQR, bincount, conditional histograms) against numpy.

Every statistic is checked against an independent plain-numpy computation on small random data
with ties, zeros, empty concepts and thresholds below/above every value; then for the streaming
properties: jit without retracing, `lax.scan` equal to a Python loop, and merge of a split stream
equal to the whole stream (exactly, these are integer counts).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect.stats import (
    bincount,
    conditional_cdf,
    conditional_histogram,
    conditional_quantiles,
    iou_scores,
    iou_tally,
    iqr_scores,
    iqr_thresholds,
    topk,
)

U, K, D, T = 5, 7, 3, 9  # units, label values (0 = none), label channels, grid levels
B, H, W = 4, 6, 5


def _acts(rng: np.random.Generator, n: int = B) -> np.ndarray:
  """`[n, H, W, U]` float32 with many exact zeros and ties (ReLU of a coarse grid)."""
  return np.maximum(rng.integers(-4, 6, size=(n, H, W, U)), 0).astype(np.float32) * 0.5


def _labels(rng: np.random.Generator, n: int = B) -> np.ndarray:
  """`[n, H, W, D]` int32 in [0, K - 1): concept K - 1 never occurs; repeats across channels."""
  labels = rng.integers(0, K - 1, size=(n, H, W, D)).astype(np.int32)
  labels[..., 1] = np.where(rng.random((n, H, W)) < 0.3, labels[..., 0], labels[..., 1])
  return labels


def _thresholds() -> np.ndarray:
  """Unit 0 below every value, unit 1 above every value, others in the middle (on ties)."""
  return np.array([-1.0, 100.0, 0.0, 1.0, 1.5], np.float32)


def _edges() -> np.ndarray:
  """`[U, T]` non-decreasing, with repeated levels and levels on the data's values."""
  base = np.array([-1.0, 0.0, 0.0, 0.5, 1.0, 1.25, 2.0, 2.0, 10.0], np.float32)
  return np.stack([base + 0.25 * (u % 2) for u in range(U)])


def _tree_equal(a, b) -> None:
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@functools.lru_cache(maxsize=None)
def _jit_update(stat):
  """One compiled update per statistic (much faster than op-by-op dispatch on CPU)."""
  return jax.jit(stat.update)


def _run(stat, batches):
  state = stat.init()
  for batch in batches:
    state = _jit_update(stat)(state, *batch)
  return state


def _check_streaming(update, init, merge, stacked):
  """jit traces once for same-shaped batches; merge of a split stream (either order) and
  `lax.scan` over the stacked batches both equal the sequential whole-stream state exactly."""
  traces = []

  def counted(state, *batch):
    traces.append(1)
    return update(state, *batch)

  step = jax.jit(counted)
  batches = [tuple(x[i] for x in stacked) for i in range(stacked[0].shape[0])]
  whole = init()
  for batch in batches:
    whole = step(whole, *batch)
  first, rest = step(init(), *batches[0]), init()
  for batch in batches[1:]:
    rest = step(rest, *batch)
  assert len(traces) == 1
  _tree_equal(merge(first, rest), whole)
  _tree_equal(merge(rest, first), whole)
  scanned, _ = jax.lax.scan(lambda state, batch: (update(state, *batch), None), init(), stacked)
  _tree_equal(scanned, whole)
  return whole


# ---- numpy references --------------------------------------------------------------------------


def _ref_has(labels: np.ndarray) -> np.ndarray:
  """`[..., D]` -> `[..., K]` bool with column c true iff some channel equals c."""
  return (labels[..., :, None] == np.arange(K)).any(axis=-2)


def _ref_iou_counts(acts, thresholds, labels):
  on = np.isfinite(acts) & (acts > thresholds)
  has = _ref_has(labels)
  has[..., 0] = False
  inter = np.zeros((U, K), np.int64)
  for u in range(U):
    for c in range(K):
      inter[u, c] = np.sum(on[..., u] & has[..., c])
  return inter, on.sum(axis=(0, 1, 2)), has.sum(axis=(0, 1, 2)), acts[..., 0].size


def _ref_iqr(inter, active, concept, total):
  """MI / JE from the definition MI = sum p log(p / (p_row p_col)), one (u, c) at a time."""
  out = np.zeros(inter.shape)
  for u, c in np.ndindex(*inter.shape):
    i, a, s, n = inter[u, c], active[u], concept[c], total
    table = np.array([[i, a - i], [s - i, n - a - s + i]], np.float64) / n
    rows, cols = table.sum(1), table.sum(0)
    mi = je = 0.0
    for r in range(2):
      for k in range(2):
        if table[r, k] > 0:
          mi += table[r, k] * np.log(table[r, k] / (rows[r] * cols[k]))
          je -= table[r, k] * np.log(table[r, k])
    out[u, c] = mi / je if je > 0 else 0.0
  return out


def _ref_topk(values, index, k):
  vals, idxs = [], []
  for u in range(values.shape[1]):
    keep = ~np.isnan(values[:, u])
    v, i = values[keep, u], index[keep]
    order = np.lexsort((i, -v))[:k]
    pad = k - len(order)
    vals.append(np.concatenate([v[order], np.full(pad, -np.inf)]))
    idxs.append(np.concatenate([i[order], np.full(pad, -1)]))
  return np.array(vals, np.float32), np.array(idxs, np.int32)


def _ref_above(acts, labels, edges):
  """`[K, U, T]` counts of pixels of row c (row 0 = all) with act > edge."""
  has = _ref_has(labels).reshape(-1, K).astype(np.int64)
  has[:, 0] = 1
  gt = (acts.reshape(-1, U)[:, :, None] > edges[None]).astype(np.int64)
  return np.einsum("pk,put->kut", has, gt), has.sum(0)


# ---- top-k -------------------------------------------------------------------------------------


def test_topk_matches_numpy_with_ties_and_padding():
  rng = np.random.default_rng(0)
  values = rng.integers(0, 4, size=(12, U)).astype(np.float32)  # heavy ties
  values[3, 2] = np.nan
  index = rng.permutation(100)[:12].astype(np.int32)  # ties go to the lower global index
  stat = topk(U, 5)
  batches = [(values[i : i + 3], index[i : i + 3]) for i in range(0, 12, 3)]
  got = stat.result(_run(stat, batches))
  want_v, want_i = _ref_topk(values, index, 5)
  np.testing.assert_array_equal(got.values, want_v)
  np.testing.assert_array_equal(got.indices, want_i)
  # k larger than the stream: empty slots read -inf / -1.
  got = topk(U, 20).result(_run(topk(U, 20), batches))
  want_v, want_i = _ref_topk(values, index, 20)
  np.testing.assert_array_equal(got.values, want_v)
  np.testing.assert_array_equal(got.indices, want_i)


def test_topk_signed_zero_ties_by_index():
  stat = topk(1, 2)
  state = _run(stat, [(jnp.array([[0.0], [-0.0], [0.0]]), jnp.array([7, 3, 5]))])
  np.testing.assert_array_equal(stat.result(state).indices, [[3, 5]])


def test_topk_counts_nonfinite_and_never_ranks_nan():
  stat = topk(2, 2)
  values = jnp.array([[np.nan, 1.0], [np.inf, 2.0], [0.5, -np.inf]])
  state = _run(stat, [(values, jnp.arange(3))])
  np.testing.assert_array_equal(state.nonfinite, [2, 1])
  np.testing.assert_array_equal(stat.result(state).indices, [[1, 2], [1, 0]])


def test_topk_streaming_properties():
  rng = np.random.default_rng(1)
  values = rng.integers(0, 5, size=(4, 6, U)).astype(np.float32)
  index = np.arange(24, dtype=np.int32).reshape(4, 6)[::-1]
  stat = topk(U, 4)
  whole = _check_streaming(stat.update, stat.init, stat.merge, (values, index))
  want_v, want_i = _ref_topk(values.reshape(-1, U), index.ravel(), 4)
  np.testing.assert_array_equal(stat.result(whole).values, want_v)
  np.testing.assert_array_equal(stat.result(whole).indices, want_i)


def test_topk_rejects_bad_inputs():
  stat = topk(U, 3)
  with pytest.raises(ValueError, match=r"topk values has shape \[2, 4\], expected \[\?, 5\]"):
    stat.update(stat.init(), jnp.zeros((2, 4)), jnp.arange(2))
  with pytest.raises(ValueError, match=r"topk index has shape \[3\], expected \[2\]"):
    stat.update(stat.init(), jnp.zeros((2, U)), jnp.arange(3))
  with pytest.raises(ValueError, match="topk index has dtype float32"):
    stat.update(stat.init(), jnp.zeros((2, U)), jnp.zeros(2))


# ---- IoU / IQR ---------------------------------------------------------------------------------


def test_iou_counts_and_scores_match_numpy():
  rng = np.random.default_rng(2)
  acts, labels, thr = _acts(rng), _labels(rng), _thresholds()
  stat = iou_tally(U, K)
  state = _run(stat, [(acts[:2], thr, labels[:2]), (acts[2:], thr, labels[2:])])
  inter, active, concept, total = _ref_iou_counts(acts, thr, labels)
  np.testing.assert_array_equal(state.intersection, inter)
  np.testing.assert_array_equal(state.active, active)
  np.testing.assert_array_equal(state.concept, concept)
  assert int(state.pixels) == total and int(state.images) == B
  assert active[0] == total and active[1] == 0 and concept[K - 1] == 0
  union = active[:, None] + concept[None, :] - inter
  want_iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
  np.testing.assert_allclose(iou_scores(state), want_iou, rtol=1e-12)
  np.testing.assert_allclose(stat.result(state), want_iou, rtol=1e-12)
  np.testing.assert_allclose(iqr_scores(state), _ref_iqr(inter, active, concept, total), atol=1e-12)
  assert np.all(iqr_scores(state)[[0, 1]] == 0)  # a unit always (never) on carries no information


def test_iou_category_counts_match_numpy():
  rng = np.random.default_rng(3)
  acts, labels, thr = _acts(rng), _labels(rng), _thresholds()
  labels[0] = np.where(labels[0] >= 3, 1, labels[0])  # image 0 lacks category 1
  categories = [0, 0, 0, 1, 1, 1, 2]  # category 2 (label 6) never occurs
  state = _run(iou_tally(U, K, categories), [(acts, thr, labels)])
  on = (acts > thr).sum(axis=(1, 2))  # [B, U]
  present = _ref_has(labels).any(axis=(1, 2))  # [B, K], label 0 included
  cat_present = np.stack([present[:, np.array(categories) == g].any(1) for g in range(3)], 1)
  np.testing.assert_array_equal(state.images_with, present.sum(0))
  np.testing.assert_array_equal(state.category_active, on.T @ cat_present)
  np.testing.assert_array_equal(state.category_pixels, H * W * cat_present.sum(0))
  inter, _, concept, _ = _ref_iou_counts(acts, thr, labels)
  active = (on.T @ cat_present)[:, categories]
  total = (H * W * cat_present.sum(0))[categories]
  union = active + concept - inter
  np.testing.assert_allclose(
      iou_scores(state, by_category=True), np.where(union > 0, inter / np.maximum(union, 1), 0)
  )
  want_iqr = np.zeros((U, K))
  for c in range(K):
    if total[c]:
      one = _ref_iqr(inter[:, c : c + 1], active[:, c], concept[c : c + 1], total[c])
      want_iqr[:, c] = one[:, 0]
  np.testing.assert_allclose(iqr_scores(state, by_category=True), want_iqr, atol=1e-12)


def test_iou_nonfinite_and_bad_labels_are_counted_not_mixed_in():
  rng = np.random.default_rng(4)
  acts, labels, thr = _acts(rng), _labels(rng), _thresholds()
  acts[0, 0, 0, 2], acts[1, 2, 3, 2], acts[2, 1, 1, 4] = np.nan, np.inf, -np.inf
  labels[0, 0, 0, 0], labels[3, 5, 4, 2] = -1, K
  stat = iou_tally(U, K)
  state = _run(stat, [(acts, thr, labels)])
  np.testing.assert_array_equal(state.nonfinite, [0, 0, 2, 0, 1])
  assert int(state.bad_labels) == 2
  clean = np.where(labels < 0, 0, np.where(labels >= K, 0, labels))
  inter, active, concept, _ = _ref_iou_counts(acts, thr, clean)
  np.testing.assert_array_equal(state.intersection, inter)
  np.testing.assert_array_equal(state.active, active)
  np.testing.assert_array_equal(state.concept, concept)


def test_iou_blocked_counts_cover_every_pixel_block_and_tail():
  """The CPU loop over 512-pixel blocks (two full blocks and a tail here) and the one-matmul
  path of other backends give numpy's counts, with non-finite values in a later block and in
  the tail counted, not tallied."""
  from jaxdissect.stats import iou  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(11)
  acts, labels, thr = _acts(rng, 40), _labels(rng, 40), _thresholds()  # 1200 pixels
  flat = acts.reshape(-1, U)
  flat[700, 2], flat[1100, 4], flat[1199, 3] = np.nan, np.inf, -np.inf
  acts = flat.reshape(acts.shape)
  state = _run(iou_tally(U, K), [(acts, thr, labels)])
  inter, active, concept, _ = _ref_iou_counts(acts, thr, labels)
  np.testing.assert_array_equal(state.intersection, inter)
  np.testing.assert_array_equal(state.active, active)
  np.testing.assert_array_equal(state.concept, concept)
  np.testing.assert_array_equal(state.nonfinite, [0, 0, 1, 1, 1])
  columns = jnp.asarray(_ref_has(labels).reshape(-1, K))
  looped = jax.jit(iou._on_counts_looped)(flat, thr, columns)
  batched = jax.jit(iou._on_counts_batched)(flat, thr, columns)
  for a, b in zip(looped, batched, strict=True):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(looped[0][:, 1:], inter[:, 1:])


def test_iou_streaming_properties():
  rng = np.random.default_rng(5)
  acts, labels = _acts(rng, 12).reshape(3, B, H, W, U), _labels(rng, 12).reshape(3, B, H, W, D)
  thr = jnp.asarray(_thresholds())
  stat = iou_tally(U, K, [0, 0, 1, 1, 1, 2, 2])
  update = lambda state, a, l: stat.update(state, a, thr, l)
  whole = _check_streaming(update, stat.init, stat.merge, (acts, labels))
  inter, *_ = _ref_iou_counts(acts.reshape(-1, H, W, U), _thresholds(), labels.reshape(-1, H, W, D))
  np.testing.assert_array_equal(whole.intersection, inter)


def test_iou_rejects_bad_inputs():
  stat = iou_tally(U, K)
  acts, thr = jnp.zeros((2, H, W, U)), jnp.zeros(U)
  labels = jnp.zeros((2, H, W, D), jnp.int32)
  with pytest.raises(ValueError, match=r"acts has shape \[2, 6, 5, 4\], expected \[\?, \?, \?, 5"):
    stat.update(stat.init(), acts[..., :4], thr, labels)
  with pytest.raises(ValueError, match=r"thresholds has shape \[3\], expected \[5\]"):
    stat.update(stat.init(), acts, thr[:3], labels)
  with pytest.raises(ValueError, match=r"labels has shape \[2, 3, 5, 3\], expected \[2, 6, 5, \?"):
    stat.update(stat.init(), acts, thr, labels[:, :3])
  with pytest.raises(ValueError, match=r"labels has shape \[2, 6, 5\], expected \[B, H, W, D\]"):
    stat.update(stat.init(), acts, thr, labels[..., 0])
  with pytest.raises(ValueError, match="labels has dtype float32, expected an integer dtype"):
    stat.update(stat.init(), acts, thr, labels.astype(jnp.float32))
  with pytest.raises(ValueError, match="concept_categories has shape"):
    iou_tally(U, K, [0, 1])


# ---- bincount ----------------------------------------------------------------------------------


def test_bincount_matches_numpy_and_counts_overflow():
  rng = np.random.default_rng(6)
  x = rng.integers(-3, 12, size=(5, 7, 3)).astype(np.int32)
  stat = bincount(9)
  state = _run(stat, [(x[:2],), (x[2:],)])
  inside = x[(x >= 0) & (x < 9)]
  np.testing.assert_array_equal(stat.result(state), np.bincount(inside, minlength=9))
  assert int(state.overflow) == x.size - inside.size
  small = _run(stat, [(jnp.array([-1, 8, 120, 127], jnp.int8),)])  # no int8 overflow
  np.testing.assert_array_equal(small.counts, [0] * 8 + [1])
  assert int(small.overflow) == 3


def test_bincount_streaming_properties():
  rng = np.random.default_rng(7)
  x = rng.integers(-1, 10, size=(3, 50)).astype(np.int32)
  stat = bincount(8)
  whole = _check_streaming(stat.update, stat.init, stat.merge, (x,))
  np.testing.assert_array_equal(whole.counts, np.bincount(x[(x >= 0) & (x < 8)], minlength=8))
  with pytest.raises(ValueError, match="bincount input has dtype float32"):
    stat.update(stat.init(), jnp.zeros(3))


# ---- conditional histograms --------------------------------------------------------------------


def test_conditional_counts_match_numpy():
  rng = np.random.default_rng(8)
  acts, labels, edges = _acts(rng), _labels(rng), _edges()
  stat = conditional_histogram(U, K, edges)
  state = _run(stat, [(acts[:1], labels[:1]), (acts[1:], labels[1:])])
  above, pixels = _ref_above(acts, labels, edges)
  np.testing.assert_array_equal(state.above, above)
  np.testing.assert_array_equal(state.pixels, pixels)
  np.testing.assert_array_equal(state.count, np.broadcast_to(pixels[:, None], (K, U)))
  assert np.all(above[:, :, 0] == pixels[:, None])  # first edge below every value
  assert np.all(above[:, :, -1] == 0)  # last edge above every value
  cdf = conditional_cdf(state)
  count = pixels[:, None, None]
  np.testing.assert_allclose(cdf, 1 - np.where(count > 0, above / np.maximum(count, 1), 0))
  assert np.all(cdf[K - 1] == 1.0)  # empty concept: nothing above any level, no NaN


def test_conditional_nonfinite_and_bad_labels():
  rng = np.random.default_rng(9)
  acts, labels, edges = _acts(rng), _labels(rng), _edges()
  acts[0, 0, 0, 1], acts[2, 3, 4, 1], acts[1, 1, 1, 3] = np.nan, np.inf, -np.inf
  labels[1, 2, 2, 1] = 99
  stat = conditional_histogram(U, K, edges)
  state = _run(stat, [(acts, labels)])
  np.testing.assert_array_equal(state.nonfinite, [0, 2, 0, 1, 0])
  assert int(state.bad_labels) == 1
  finite = np.isfinite(acts)
  above, _ = _ref_above(np.where(finite, acts, -np.inf), np.where(labels == 99, 0, labels), edges)
  np.testing.assert_array_equal(state.above, above)
  has = _ref_has(np.where(labels == 99, 0, labels)).reshape(-1, K)
  has[:, 0] = True
  np.testing.assert_array_equal(state.count, has.T.astype(int) @ finite.reshape(-1, U))


def test_conditional_cpu_kernel_writes_the_state_of_the_xla_scatter(monkeypatch):
  from jaxdissect.stats import conditional  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(12)
  acts, labels, edges = _acts(rng), _labels(rng), _edges()
  acts[0, 0, 0, 1], acts[2, 3, 4, 1], acts[1, 1, 1, 3] = np.nan, np.inf, -np.inf
  labels[1, 2, 2, 1], labels[0, 1, 1, 0] = 99, -3
  stat = conditional_histogram(U, K, edges)
  host = _run(stat, [(acts[:2], labels[:2]), (acts[2:], labels[2:])])
  monkeypatch.setattr(conditional, "numpy_on_cpu", lambda host, device, *args: device(*args))
  stat = conditional_histogram(U, K, edges)  # a new statistic: traced again, not the cached jit
  device = _run(stat, [(acts[:2], labels[:2]), (acts[2:], labels[2:])])
  for field, a, b in zip(host._fields, host, device):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=field)


def test_conditional_quantiles_interpolate_the_grid():
  rng = np.random.default_rng(10)
  acts = rng.normal(size=(2, 8, 8, U)).astype(np.float32)
  labels = (rng.integers(0, K - 1, size=(2, 8, 8, 1))).astype(np.int32)
  edges = np.sort(rng.normal(size=(U, 40)), axis=1).astype(np.float32)
  state = _run(conditional_histogram(U, K, edges), [(acts, labels)])
  cdf = conditional_cdf(state)
  # Exact at grid points where the CDF steps up (q = cdf[t] > cdf[t - 1] maps back to edges[t]).
  for u in range(U):
    steps = np.flatnonzero(np.diff(cdf[0, u]) > 0) + 1
    got = conditional_quantiles(state, cdf[0, u, steps])[:, 0, u]
    np.testing.assert_allclose(got, edges[u, steps], rtol=1e-12)
  # Between grid points: the piecewise-linear CDF through the grid maps the quantile back to q
  # (q avoids plateau values, so the preimage is unique); outside the tallied range, the ends.
  qs = np.array([0.1, 0.5, 0.9]) + 1e-3 * np.pi
  got = conditional_quantiles(state, qs)
  assert got.shape == (3, K, U)
  for c, u in np.ndindex(K, U):
    f, x = cdf[c, u], edges[u].astype(np.float64)
    inside = (qs >= f[0]) & (qs <= f[-1])
    np.testing.assert_allclose(np.interp(got[inside, c, u], x, f), qs[inside], atol=1e-9)
    np.testing.assert_array_equal(got[qs < f[0], c, u], x[0])
    np.testing.assert_array_equal(got[qs > f[-1], c, u], x[-1])
  assert np.all(got[:, K - 1] == edges[:, 0])  # empty concept: CDF is 1 everywhere
  # Within one grid step of the exact conditional quantile (row 0: all pixels).
  for u in range(U):
    exact = np.quantile(acts[..., u], qs[1])
    assert abs(got[1, 0, u] - exact) <= np.max(np.diff(edges[u])) + 1e-6


def test_conditional_streaming_properties_and_merge_check():
  rng = np.random.default_rng(11)
  acts, labels = _acts(rng, 12).reshape(3, B, H, W, U), _labels(rng, 12).reshape(3, B, H, W, D)
  stat = conditional_histogram(U, K, _edges())
  whole = _check_streaming(stat.update, stat.init, stat.merge, (acts, labels))
  above, _ = _ref_above(acts, labels, _edges())
  np.testing.assert_array_equal(whole.above, above)
  other = conditional_histogram(U, K, _edges() + 1)
  with pytest.raises(ValueError, match="different edges"):
    stat.merge(whole, other.init())
  traced = jax.jit(stat.merge)(whole, other.init())
  assert int(traced.mismatch) == 1
  with pytest.raises(ValueError, match="different edges"):
    conditional_cdf(traced)


def test_conditional_rejects_bad_inputs():
  edges = _edges()
  with pytest.raises(ValueError, match=r"edges has shape \[4, 9\], expected \[5, T\]"):
    conditional_histogram(U, K, edges[:4])
  with pytest.raises(ValueError, match=r"unit 2 has edges\[3\]=3.0 > edges\[4\]=1.0"):
    conditional_histogram(U, K, _set(edges, (2, 3), 3.0))
  with pytest.raises(ValueError, match="edges contains NaN"):
    conditional_histogram(U, K, _set(edges, (0, 0), np.nan))
  stat = conditional_histogram(U, K, edges)
  acts, labels = jnp.zeros((1, H, W, U)), jnp.zeros((1, H, W, D), jnp.int32)
  with pytest.raises(ValueError, match=r"acts has shape \[1, 6, 5, 2\]"):
    stat.update(stat.init(), acts[..., :2], labels)
  with pytest.raises(ValueError, match=r"labels has shape \[2, 6, 5, 3\], expected \[1, 6, 5, \?"):
    stat.update(stat.init(), acts, jnp.zeros((2, H, W, D), jnp.int32))
  with pytest.raises(ValueError, match="labels has dtype bool"):
    stat.update(stat.init(), acts, labels.astype(bool))
  with pytest.raises(ValueError, match=r"q must be"):
    conditional_quantiles(stat.init(), 1.5)


def _set(array: np.ndarray, where: tuple[int, int], value: float) -> np.ndarray:
  out = array.copy()
  out[where] = value
  return out


def _ref_level_iqr(on: np.ndarray, has: np.ndarray) -> tuple[float, float]:
  """IQR and agreement from pixel booleans, MI from its definition."""
  table = np.array([[np.mean(on & has), np.mean(on & ~has)],
                    [np.mean(~on & has), np.mean(~on & ~has)]])
  rows, cols = table.sum(1), table.sum(0)
  mi = je = 0.0
  for r, k in np.ndindex(2, 2):
    if table[r, k] > 0:
      mi += table[r, k] * np.log(table[r, k] / (rows[r] * cols[k]))
      je -= table[r, k] * np.log(table[r, k])
  return (mi / je if je > 0 else 0.0), table[0, 0] + table[1, 1]


def test_iqr_thresholds_match_brute_force():
  rng = np.random.default_rng(12)
  labels = rng.integers(0, K - 1, size=(4, 8, 8, 1)).astype(np.int32)
  acts = rng.random((4, 8, 8, 3)).astype(np.float32)
  acts[..., 0] += 2.0 * (labels[..., 0] == 2)  # unit 0 detects concept 2
  acts[..., 2] = 0.0  # a dead unit: no level above 0 is admissible
  fracs = np.logspace(-3, 0, 20)
  edges = np.quantile(acts.reshape(-1, 3), 1 - fracs, axis=0).T[:, ::-1].astype(np.float32)
  state = _run(conditional_histogram(3, K, edges), [(acts, labels)])
  got = iqr_thresholds(state)
  flat_acts, flat_labels = acts.reshape(-1, 3), labels.reshape(-1)
  want = np.zeros((K, 3))
  for c, u in np.ndindex(K, 3):
    has = flat_labels == c
    if c == 0 or has.mean() < 1e-3:
      continue
    for t in range(edges.shape[1]):
      iqr, agreement = _ref_level_iqr(flat_acts[:, u] > edges[u, t], has)
      if edges[u, t] > 0 and agreement > 0.8:
        want[c, u] = max(want[c, u], iqr)
  np.testing.assert_allclose(got.max_iqr, want, atol=1e-9)
  assert got.labels.tolist()[0] == 2 and got.labels[2] == 0 and got.iqr[2] == 0
  assert got.thresholds[0] > 1.0  # above every background activation of unit 0
  for u in range(3):
    iqr, _ = _ref_level_iqr(flat_acts[:, u] > got.thresholds[u], flat_labels == got.labels[u])
    assert got.labels[u] == 0 or iqr == pytest.approx(got.iqr[u])
