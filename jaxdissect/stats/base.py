"""The shape every streaming statistic takes: four pure functions over a NamedTuple state.

Dissection streams millions of activations through running statistics. Writing each one as an
optax-style bundle of pure functions (rather than a mutable object with `.add()`) lets the same
code run under `jit`, inside `lax.scan`, and sharded over devices, where per-device states are
combined with `merge`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax


class Stat(NamedTuple):
  """A streaming statistic.

  Attributes:
    init: `() -> state`, the empty state (shapes fixed by the factory's arguments).
    update: `(state, *batch) -> state`, folds one batch in; jittable, scan-friendly.
    merge: `(state, state) -> state`, combines two states built on disjoint parts of a stream.
    result: `(state, ...) -> result`, reads the statistic out (may take query arguments).
  """

  init: Callable[[], Any]
  update: Callable[..., Any]
  merge: Callable[[Any, Any], Any]
  result: Callable[..., Any]


def merge_over_axis(stat: Stat, state: Any, axis_name: str) -> Any:
  """Merges per-device states inside `shard_map`/`pmap` into one state, the same on every device.

  States are all-gathered along `axis_name` and folded left to right with `stat.merge`, so the
  outcome equals merging the shards in device order on one host. The result is identical on
  every device; jax cannot infer that, so use `shard_map(..., check_vma=False)` with
  `out_specs=P()`, or keep `out_specs=P(axis_name)` and read any device's copy.
  """
  gathered = jax.lax.all_gather(state, axis_name)
  n = jax.tree.leaves(gathered)[0].shape[0]
  merged = jax.tree.map(lambda x: x[0], gathered)
  for i in range(1, n):
    merged = stat.merge(merged, jax.tree.map(lambda x, i=i: x[i], gathered))
  return merged


def merge_all(stat: Stat, states: list[Any]) -> Any:
  """Folds a list of states (e.g. one per host or per shard) with `stat.merge`, in order."""
  if not states:
    raise ValueError("merge_all needs at least one state, got an empty list")
  merged = states[0]
  for s in states[1:]:
    merged = stat.merge(merged, s)
  return merged
