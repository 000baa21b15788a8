"""Sharded tallies: per-device updates under `shard_map` merged with collectives equal one device.

The batch is split over a 'data' mesh axis of the four forced host CPU devices (see conftest);
thresholds/edges are replicated. Each device tallies its shard, `merge_over_axis` combines the
states, and every device's merged state must equal the single-device state over the whole batch,
exactly for integer counts.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdissect.stats import (
    bincount,
    conditional_histogram,
    iou_tally,
    merge_over_axis,
    moments,
    topk,
)

U, K, D, T = 5, 7, 3, 6
B, H, W = 8, 4, 3  # two images per device


def _mesh() -> jax.sharding.Mesh:
  assert len(jax.devices()) == 4, "conftest forces four host CPU devices"
  return jax.make_mesh((4,), ("data",))


def _sharded_state(stat, sharded_args, replicated_args=()):
  """Runs init+update per device, merges over 'data'; returns `[4, ...]` (one merged copy each)."""
  mesh = _mesh()

  def per_device(*args):
    local, shared = args[: len(sharded_args)], args[len(sharded_args) :]
    state = stat.update(stat.init(), *local, *shared)
    merged = merge_over_axis(stat, state, "data")
    return jax.tree.map(lambda x: x[None], merged)

  specs = (P("data"),) * len(sharded_args) + (P(),) * len(replicated_args)
  placed = [jax.device_put(x, NamedSharding(mesh, s)) for x, s in
            zip((*sharded_args, *replicated_args), specs)]
  fn = jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=P("data"))
  return jax.jit(fn)(*placed)


def _assert_each_device_equals(stacked, single, exact: bool = True) -> None:
  for got, want in zip(jax.tree.leaves(stacked), jax.tree.leaves(single), strict=True):
    for device_copy in np.asarray(got):
      if exact:
        np.testing.assert_array_equal(device_copy, np.asarray(want))
      else:
        np.testing.assert_allclose(device_copy, np.asarray(want), rtol=1e-4)


def _data(seed: int):
  rng = np.random.default_rng(seed)
  acts = (np.maximum(rng.integers(-3, 5, size=(B, H, W, U)), 0) * 0.5).astype(np.float32)
  acts[1, 0, 0, 2] = np.nan
  labels = rng.integers(0, K - 1, size=(B, H, W, D)).astype(np.int32)
  labels[5, 1, 1, 0] = K + 3  # a bad label on the third device
  return acts, labels


def test_sharded_topk_equals_single_device():
  acts, _ = _data(0)
  values = acts.max(axis=(1, 2))  # per-image spatial max [B, U], ties included
  index = np.arange(100, 100 + B, dtype=np.int32)
  stat = topk(U, 3)
  single = jax.jit(stat.update)(stat.init(), values, index)
  _assert_each_device_equals(_sharded_state(stat, (values, index)), single)


def test_sharded_iou_equals_single_device():
  acts, labels = _data(1)
  thresholds = np.array([-1.0, 9.0, 0.0, 0.5, 1.0], np.float32)
  stat = iou_tally(U, K, [0, 0, 0, 1, 1, 2, 2])
  single = jax.jit(stat.update)(stat.init(), acts, thresholds, labels)
  assert int(single.bad_labels) == 1 and int(single.nonfinite.sum()) == 1
  # Sharded arguments come first in `_sharded_state`, so reorder (acts, labels, thresholds).
  reordered = stat._replace(update=lambda s, a, l, t: stat.update(s, a, t, l))
  sharded = _sharded_state(reordered, (acts, labels), (thresholds,))
  _assert_each_device_equals(sharded, single)


def test_sharded_bincount_equals_single_device():
  _, labels = _data(2)
  stat = bincount(K - 2)  # some values overflow
  single = jax.jit(stat.update)(stat.init(), labels)
  assert int(single.overflow) > 0
  _assert_each_device_equals(_sharded_state(stat, (labels,)), single)


def test_sharded_conditional_equals_single_device():
  acts, labels = _data(3)
  edges = np.tile(np.array([-1.0, 0.0, 0.0, 0.5, 1.0, 5.0], np.float32), (U, 1))
  stat = conditional_histogram(U, K, edges)
  single = jax.jit(stat.update)(stat.init(), acts, labels)
  _assert_each_device_equals(_sharded_state(stat, (acts, labels)), single)


def test_sharded_moments_close_to_single_device():
  rng = np.random.default_rng(4)
  x = (1e4 + rng.normal(size=(B, 16, U))).astype(np.float32)
  stat = moments(U)
  single = jax.jit(stat.update)(stat.init(), x)
  _assert_each_device_equals(_sharded_state(stat, (x,)), single, exact=False)
