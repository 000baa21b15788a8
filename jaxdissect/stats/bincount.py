"""Streaming histogram of integer values (label frequencies, argmax concepts, bins).

Label statistics such as concept pixel fractions are plain counts of integer codes. Values outside
`[0, num_bins)` are counted in `overflow` instead of being clipped into the edge bins or dropped,
so a wrong `num_bins` (e.g. a segmenter with more labels than declared) shows up in the result.
Counts are int32 (at most 2**31 - 1 per bin).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdissect.stats.base import Stat


class BincountState(NamedTuple):
  """`counts [num_bins]` int32 and `overflow []` int32 (values < 0 or >= num_bins)."""

  counts: jax.Array
  overflow: jax.Array


def bincount(num_bins: int) -> Stat:
  """Counts of each integer value in `[0, num_bins)` over inputs of any shape.

  update(state, x [...] integer) -> state; result(state) -> `counts [num_bins]` (the overflow
  count stays in the state).
  """
  if num_bins < 1:
    raise ValueError(f"bincount needs num_bins >= 1, got {num_bins}")

  def init() -> BincountState:
    return BincountState(jnp.zeros((num_bins,), jnp.int32), jnp.zeros((), jnp.int32))

  def update(state: BincountState, x: jax.Array) -> BincountState:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
      raise ValueError(f"bincount input has dtype {x.dtype}, expected an integer dtype")
    x = x.ravel()
    inside = (x >= 0) & (x < num_bins)
    # Out-of-range values go to index num_bins, which mode="drop" discards.
    slot = jnp.where(inside, x.astype(jnp.int32), num_bins)
    counts = state.counts.at[slot].add(1, mode="drop")
    return BincountState(counts, state.overflow + jnp.sum(~inside, dtype=jnp.int32))

  def merge(a: BincountState, b: BincountState) -> BincountState:
    return BincountState(a.counts + b.counts, a.overflow + b.overflow)

  def result(state: BincountState) -> jax.Array:
    return state.counts

  return Stat(init, update, merge, result)
