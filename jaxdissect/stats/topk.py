"""Per-unit top-k values with the global indices of the images that produced them.

Dissection shows, for each unit, the images where it fires hardest (typically ranked by the
per-image spatial maximum). Keeping a fixed `[U, k]` buffer of (value, image index) pairs makes
the statistic a fixed-shape pytree that can be updated under `jit`/`scan` and merged across
devices. Ordering is a total order — value descending, then global index ascending — so the
result does not depend on how the stream was batched, merged or sharded.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.errors import check_shape
from jaxdissect.stats.base import Stat

# Index stored in slots that hold no image yet; sorts after every real index.
_EMPTY = int(np.iinfo(np.int32).max)


class TopKState(NamedTuple):
  """Running top-k buffer.

  Attributes:
    values: `[U, k]` float32, descending per unit; `-inf` in empty slots.
    indices: `[U, k]` int32 global image indices; int32 max in empty slots.
    nonfinite: `[U]` int32, how many non-finite values were seen (NaN is never ranked;
      +-inf are ranked like ordinary values).
  """

  values: jax.Array
  indices: jax.Array
  nonfinite: jax.Array


class TopK(NamedTuple):
  """Result of `topk`: `values [U, k]` descending and `indices [U, k]` (-1 where empty)."""

  values: jax.Array
  indices: jax.Array


def _select(values: jax.Array, indices: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Keeps the first k of `[U, N]` candidates under (value desc, index asc)."""
  # lax.sort compares floats with `<` (so -0.0 ties 0.0, then the index decides).
  keys, indices = jax.lax.sort((-values, indices), dimension=1, num_keys=2)
  return -keys[:, :k], indices[:, :k]


def topk(num_units: int, k: int) -> Stat:
  """Top-k values per unit with their global image indices.

  update(state, values [B, U], index [B] int integer) -> state; ties are broken by the lower
  global index. result(state) -> `TopK(values [U, k], indices [U, k])`.
  """
  if num_units < 1 or k < 1:
    raise ValueError(f"topk needs num_units >= 1 and k >= 1, got num_units={num_units}, k={k}")

  def init() -> TopKState:
    return TopKState(
        values=jnp.full((num_units, k), -jnp.inf, jnp.float32),
        indices=jnp.full((num_units, k), _EMPTY, jnp.int32),
        nonfinite=jnp.zeros((num_units,), jnp.int32),
    )

  def update(state: TopKState, values: jax.Array, index: jax.Array) -> TopKState:
    values = jnp.asarray(values)
    index = jnp.asarray(index)
    check_shape("topk values", values.shape, (None, num_units))
    check_shape("topk index", index.shape, (values.shape[0],))
    if not jnp.issubdtype(index.dtype, jnp.integer):
      raise ValueError(f"topk index has dtype {index.dtype}, expected an integer dtype")
    values = values.astype(jnp.float32).T  # [U, B]
    is_nan = jnp.isnan(values)
    index = jnp.broadcast_to(index.astype(jnp.int32), values.shape)
    cand_values = jnp.concatenate([state.values, jnp.where(is_nan, -jnp.inf, values)], axis=1)
    cand_index = jnp.concatenate([state.indices, jnp.where(is_nan, _EMPTY, index)], axis=1)
    top_values, top_index = _select(cand_values, cand_index, k)
    nonfinite = state.nonfinite + jnp.sum(~jnp.isfinite(values), axis=1, dtype=jnp.int32)
    return TopKState(top_values, top_index, nonfinite)

  def merge(a: TopKState, b: TopKState) -> TopKState:
    values, indices = _select(
        jnp.concatenate([a.values, b.values], axis=1),
        jnp.concatenate([a.indices, b.indices], axis=1),
        k,
    )
    return TopKState(values, indices, a.nonfinite + b.nonfinite)

  def result(state: TopKState) -> TopK:
    empty = state.indices == _EMPTY
    return TopK(values=state.values, indices=jnp.where(empty, -1, state.indices))

  return Stat(init, update, merge, result)


def largest_values(chunks: Iterable[np.ndarray], keep: int) -> np.ndarray:
  """The `keep` largest values of each row over a stream of `[U, N_i]` host arrays (unsorted).

  The global top values are among each chunk's top values, so only `[U, keep]` is ever held:
  exact order statistics of the upper tail with memory independent of the stream's length.
  """
  if keep < 1:
    raise ValueError(f"keep is {keep}, expected a positive number of values")
  kept = None
  for chunk in chunks:
    kept = chunk if kept is None else np.concatenate([kept, chunk], axis=1)
    if kept.shape[1] > keep:
      kept = np.partition(kept, kept.shape[1] - keep, axis=1)[:, -keep:]
  if kept is None:
    raise ValueError("largest_values got an empty stream")
  return kept
