"""Running moments and cross-covariance against float64 numpy, including large offsets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect.stats import cross_covariance, moments

C, A, BB = 4, 3, 2


def _offset_data(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
  """float32 data with mean ~1e4 and unit-scale spread (naive sum-of-squares fails here)."""
  return (1e4 + rng.normal(size=shape) * np.linspace(0.5, 2.0, shape[-1])).astype(np.float32)


def _run(stat, batches):
  update = jax.jit(stat.update)
  state = stat.init()
  for batch in batches:
    state = update(state, *batch)
  return state


def test_moments_match_numpy_with_large_offset():
  rng = np.random.default_rng(0)
  x = _offset_data(rng, (6, 5, 7, C))  # leading dims are flattened
  stat = moments(C)
  state = _run(stat, [(x[i : i + 2],) for i in range(0, 6, 2)])
  rows = x.reshape(-1, C).astype(np.float64)
  res = stat.result(state)
  assert int(res.count) == rows.shape[0]
  np.testing.assert_allclose(res.mean, rows.mean(0), rtol=5e-7)
  np.testing.assert_allclose(res.var, rows.var(0, ddof=1), rtol=1e-3)
  np.testing.assert_allclose(stat.result(state, ddof=0).var, rows.var(0), rtol=1e-3)


def test_moments_streaming_merge_scan_and_retrace():
  rng = np.random.default_rng(1)
  x = _offset_data(rng, (4, 30, C))
  stat, traces = moments(C), []

  @jax.jit
  def step(state, batch):
    traces.append(1)
    return stat.update(state, batch)

  whole = stat.init()
  for batch in x:
    whole = step(whole, batch)
  first, rest = step(stat.init(), x[0]), step(step(step(stat.init(), x[1]), x[2]), x[3])
  assert len(traces) == 1
  merged = stat.merge(first, rest)
  scanned, _ = jax.lax.scan(lambda s, b: (stat.update(s, b), None), stat.init(), x)
  for other in (merged, scanned):
    assert int(other.count) == int(whole.count)
    np.testing.assert_allclose(other.mean, whole.mean, rtol=1e-6)
    np.testing.assert_allclose(other.m2, whole.m2, rtol=1e-3)


def test_moments_edge_cases():
  stat = moments(2)
  assert np.all(np.isnan(stat.result(stat.init()).var))
  one = stat.update(stat.init(), jnp.array([[1.0, 2.0]]))
  assert np.all(np.isnan(stat.result(one).var))  # n <= ddof
  np.testing.assert_array_equal(stat.result(one, ddof=0).var, [0.0, 0.0])
  empty = stat.update(one, jnp.zeros((0, 2)))
  np.testing.assert_array_equal(empty.mean, one.mean)
  np.testing.assert_array_equal(stat.merge(stat.init(), one).mean, one.mean)
  with pytest.raises(ValueError, match=r"x has shape \[3\], expected \[2\]"):
    stat.update(stat.init(), jnp.zeros((5, 3)))


def test_cross_covariance_matches_numpy():
  rng = np.random.default_rng(2)
  a = _offset_data(rng, (5, 4, 6, A))
  b = (0.3 * a[..., :BB] + rng.normal(size=(5, 4, 6, BB)) - 2e3).astype(np.float32)
  b[..., 1] = 7.0  # a constant feature: correlation 0, not NaN
  stat = cross_covariance(A, BB)
  state = _run(stat, [(a[:2], b[:2]), (a[2:], b[2:])])
  ra, rb = a.reshape(-1, A).astype(np.float64), b.reshape(-1, BB).astype(np.float64)
  full = np.cov(ra, rb, rowvar=False)
  res = stat.result(state)
  assert int(res.count) == ra.shape[0]
  np.testing.assert_allclose(res.covariance, full[:A, A:], rtol=2e-3, atol=1e-4)
  with np.errstate(invalid="ignore", divide="ignore"):
    corr = np.corrcoef(ra, rb, rowvar=False)[:A, A:]
  corr[:, 1] = 0.0
  np.testing.assert_allclose(res.correlation, corr, atol=1e-3)
  np.testing.assert_allclose(state.mean_a, ra.mean(0), rtol=5e-7)
  np.testing.assert_allclose(state.m2_b[0] / (ra.shape[0] - 1), rb[:, 0].var(ddof=1), rtol=1e-3)
  merged = stat.merge(_run(stat, [(a[:1], b[:1])]), _run(stat, [(a[1:], b[1:])]))
  np.testing.assert_allclose(merged.cross, state.cross, rtol=1e-3, atol=1e-2)


def test_cross_covariance_rejects_bad_inputs():
  stat = cross_covariance(A, BB)
  with pytest.raises(ValueError, match=r"a has shape \[4, 3\] and b has shape \[5, 2\]"):
    stat.update(stat.init(), jnp.zeros((4, A)), jnp.zeros((5, BB)))
  with pytest.raises(ValueError, match=r"b has shape \[3\], expected \[2\]"):
    stat.update(stat.init(), jnp.zeros((4, A)), jnp.zeros((4, 3)))
