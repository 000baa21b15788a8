"""Quantile sketch: rank error against numpy's exact quantiles on adversarial streams."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect.stats import quantile
from jaxdissect.stats.base import merge_all, merge_over_axis

N, U = 10**6, 64
QS = np.linspace(0.0, 1.0, 1001)
BOUND = 1e-3


def _streams():
  rng = np.random.default_rng(0)
  spikes = rng.standard_normal((N, U)).astype(np.float32)
  spikes[rng.integers(0, N, 20)] = 1e30
  spikes[rng.integers(0, N, 20)] = -1e30
  return {
      "normal": lambda: rng.standard_normal((N, U)).astype(np.float32),
      "ascending": lambda: np.arange(N, dtype=np.float32)[:, None] + np.zeros((1, U), np.float32),
      "descending": lambda: np.arange(N, 0, -1, dtype=np.float32)[:, None] * np.ones((1, U),
                                                                                   np.float32),
      "heavy_ties": lambda: rng.choice(np.float32([0, 0, 0, 1, 2.5]), (N, U)),
      "spikes": lambda: spikes,
  }


STREAMS = _streams()


def rank_error(data: np.ndarray, est: np.ndarray, qs: np.ndarray) -> float:
  """Largest distance between q and the rank interval [F(v-), F(v)] of the estimate v."""
  worst = 0.0
  for u in range(data.shape[1]):
    col = np.sort(data[:, u])
    lo = np.searchsorted(col, est[:, u], "left") / len(col)
    hi = np.searchsorted(col, est[:, u], "right") / len(col)
    worst = max(worst, float(np.max(np.maximum(0, np.maximum(lo - qs, qs - hi)))))
  return worst


def sketch_stream(data, batch, **kw):
  stat = quantile.quantile_sketch(data.shape[1], **kw)
  update = jax.jit(stat.update)
  state = stat.init()
  for i in range(0, len(data), batch):
    state = update(state, data[i:i + batch])
  return stat, state


@pytest.mark.parametrize("name", list(STREAMS))
def test_rank_error_within_bound(name):
  data = STREAMS[name]()
  stat, state = sketch_stream(data, 100_000)
  est = np.asarray(stat.result(state, QS))
  assert rank_error(data, est, QS) <= BOUND
  np.testing.assert_array_equal(est[0], data.min(0))
  np.testing.assert_array_equal(est[-1], data.max(0))


def test_quarter_memory_breaks_the_bound():
  """The accuracy test discriminates: a sketch with a quarter of the memory fails it."""
  data = STREAMS["normal"]()
  stat, state = sketch_stream(data, 100_000, k=1024)
  assert rank_error(data, np.asarray(stat.result(state, QS)), QS) > BOUND


def test_batching_and_merging_stay_within_bound():
  rng = np.random.default_rng(1)
  data = rng.gamma(2.0, size=(300_000, 8)).astype(np.float32)
  stat, whole = sketch_stream(data, 300_000)
  _, small = sketch_stream(data, 7_777)
  parts = [sketch_stream(p, 50_000, seed=i)[1] for i, p in enumerate(np.array_split(data, 3))]
  merged = jax.jit(lambda a, b, c: merge_all(stat, [a, b, c]))(*parts)
  for state in (whole, small, merged):
    est = np.asarray(stat.result(state, QS))
    assert rank_error(data, est, QS) <= BOUND
  assert int(merged.count[0]) == len(data)


def test_merge_across_devices_matches_one_device():
  devices = jax.devices()
  assert len(devices) >= 4, "conftest forces 4 host devices"
  rng = np.random.default_rng(2)
  data = rng.standard_normal((4 * 250_000, 16)).astype(np.float32)
  stat = quantile.quantile_sketch(16)
  mesh = jax.sharding.Mesh(np.array(devices[:4]), ("data",))
  spec = jax.sharding.PartitionSpec

  @jax.jit
  def sharded(x):
    def per_device(xs):
      state = stat.update(stat.init(), xs)
      return merge_over_axis(stat, state, "data")
    return jax.shard_map(per_device, mesh=mesh, in_specs=spec("data"), out_specs=spec(),
                         check_vma=False)(x)

  state = sharded(data)
  assert int(state.count[0]) == len(data)
  est = np.asarray(stat.result(state, QS))
  single = np.asarray(stat.result(stat.update(stat.init(), data), QS))
  assert rank_error(data, est, QS) <= BOUND
  assert rank_error(data, single, QS) <= BOUND
  assert np.abs(est - single).max() > 0  # the shards really were sketched separately
  np.testing.assert_array_equal(est[0], data.min(0))
  np.testing.assert_array_equal(est[-1], data.max(0))


def test_small_streams_are_exact():
  rng = np.random.default_rng(3)
  data = rng.standard_normal((999, 5)).astype(np.float32)
  stat = quantile.quantile_sketch(5, k=1024)
  state = stat.update(stat.init(), data)
  est = np.asarray(stat.result(state, QS))
  assert rank_error(data, est, QS) <= 1.0 / len(data)


def test_deterministic_given_seed_and_fixed_memory():
  data = np.random.default_rng(4).standard_normal((200_000, 4)).astype(np.float32)
  a = sketch_stream(data, 20_000, k=256, seed=7)[1]
  b = sketch_stream(data, 20_000, k=256, seed=7)[1]
  c = sketch_stream(data, 20_000, k=256, seed=8)[1]
  np.testing.assert_array_equal(a.keys, b.keys)
  assert not np.array_equal(a.keys, c.keys)
  small = sketch_stream(data[:1000], 1000, k=256)[1]
  assert quantile.memory_bytes(a) == quantile.memory_bytes(small)


def test_nonfinite_values_are_counted_not_tallied():
  data = np.random.default_rng(5).standard_normal((10_000, 3)).astype(np.float32)
  dirty = data.copy()
  dirty[:50, 0] = np.nan
  dirty[50:60, 1] = np.inf
  stat = quantile.quantile_sketch(3, k=4096)
  state = stat.update(stat.init(), dirty)
  np.testing.assert_array_equal(state.nonfinite, [50, 10, 0])
  np.testing.assert_array_equal(state.count, [9950, 9990, 10000])
  est = np.asarray(stat.result(state, QS))
  assert np.isfinite(est).all()
  clean = [dirty[np.isfinite(dirty[:, u]), u] for u in range(3)]
  for u in range(3):
    assert rank_error(clean[u][:, None], est[:, u:u + 1], QS) <= BOUND


def test_bad_input_names_shape_and_dtype():
  stat = quantile.quantile_sketch(8)
  with pytest.raises(ValueError, match=r"shape \[10, 7\].*\[\.\.\., 8\]"):
    stat.update(stat.init(), jnp.zeros((10, 7)))
  with pytest.raises(ValueError, match="int32"):
    stat.update(stat.init(), jnp.zeros((10, 8), jnp.int32))


def test_update_in_scan_equals_loop_and_jit_traces_once():
  data = np.random.default_rng(6).standard_normal((6, 3000, 4)).astype(np.float32)
  stat = quantile.quantile_sketch(4, k=512)
  traces = []

  def counted(state, x):
    traces.append(1)
    return stat.update(state, x)

  update = jax.jit(counted)
  loop = stat.init()
  for x in data:
    loop = update(loop, x)
  assert len(traces) == 1
  scanned, _ = jax.lax.scan(lambda s, x: (stat.update(s, x), None), stat.init(), data)
  np.testing.assert_array_equal(loop.keys, scanned.keys)


def test_cdf_inverts_quantiles():
  data = np.random.default_rng(7).uniform(size=(50_000, 2)).astype(np.float32)
  stat = quantile.quantile_sketch(2)
  state = stat.update(stat.init(), data)
  x = np.float32([[0.1, 0.5], [0.9, 0.25]])
  np.testing.assert_allclose(quantile.cdf(state, x), x, atol=2e-3)


def _device_only(monkeypatch):
  """Makes the sketch use its jnp kernels (`jnp.sort`) on CPU too."""
  monkeypatch.setattr(quantile, "numpy_on_cpu", lambda host, device, *args: device(*args))


def _run(data, batches, **kw):
  stat = quantile.quantile_sketch(data.shape[1], **kw)
  update = jax.jit(stat.update)
  state = stat.init()
  for x in np.split(data, batches):
    state = update(state, x)
  return state, jax.jit(stat.merge)(state, update(stat.init(), data[:len(data) // batches]))


@pytest.mark.parametrize("rows,num_levels", [(1_301, 3), (2_560, 5)],
                         ids=["short-blocks", "full-blocks-raw-jump-3"])
def test_numpy_and_jnp_kernels_give_identical_states(monkeypatch, rows, num_levels):
  """The CPU kernels (numpy sort, threads over units) and the jnp ones write the same entries,
  through thinning (shift > 0), odd fills (holes), non-finite values and a merge: with short
  blocks appended raw to level 0, and with full blocks thinned straight to level 3."""
  rng = np.random.default_rng(8)
  data = rng.standard_normal((6 * rows, 64)).astype(np.float32)  # 64 units: two threads
  data[rng.integers(0, len(data), 40), rng.integers(0, 64, 40)] = np.nan
  data[rng.integers(0, len(data), 10), 3] = -np.inf
  host = _run(data, 6, k=128, num_levels=num_levels, seed=3)
  _device_only(monkeypatch)
  device = _run(data, 6, k=128, num_levels=num_levels, seed=3)
  assert int(host[0].shift) >= 3  # the thinning path ran
  for h, d in zip(host, device):
    jax.tree.map(np.testing.assert_array_equal, h, d)


def test_vmapped_update_equals_separate_updates():
  rng = np.random.default_rng(9)
  data = rng.standard_normal((2, 3_000, 70)).astype(np.float32)
  stat = quantile.quantile_sketch(70, k=256, num_levels=3)
  states = [stat.init()._replace(rng=jax.random.key_data(jax.random.key(s))) for s in (1, 2)]
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *states)
  both = jax.jit(jax.vmap(stat.update))(stacked, data)
  shared = jax.jit(jax.vmap(stat.update, in_axes=(0, None)))(stacked, data[0])
  single = jax.jit(stat.update)
  for i, state in enumerate(states):
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(lambda x: x[i], both),
                 single(state, data[i]))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(lambda x: x[i], shared),
                 single(state, data[0]))


def test_update_under_shard_map_equals_per_shard_updates():
  devices = jax.devices()[:4]
  data = np.random.default_rng(10).standard_normal((4 * 2_500, 80)).astype(np.float32)
  stat = quantile.quantile_sketch(80, k=512, num_levels=3)
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  spec = jax.sharding.PartitionSpec
  per_shard = jax.jit(jax.shard_map(
      lambda xs: jax.tree.map(lambda a: a[None], stat.update(stat.init(), xs)),
      mesh=mesh, in_specs=spec("data"), out_specs=spec("data"), check_vma=False))(data)
  single = jax.jit(stat.update)
  for i, xs in enumerate(np.split(data, 4)):
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(lambda x: x[i], per_shard),
                 single(stat.init(), xs))
