"""Interventions as data: ablating or inserting unit sets, everywhere or inside a spatial mask.

Causal experiments change what a layer passes on and watch the image. Here every change is an
`Edit(alpha, value)` built by pure functions, so edits can be batched, vmapped (one counterfactual
world per unit), differentiated (a soft alpha) and composed, and the generator never needs hooks.

Masks are drawn at image (or any) resolution and pooled to the layer's featuremap: "max" edits a
cell the stroke touches at all, "mean" scales the edit by the share of the cell it covers.
Several edits of one layer compose in order into one edit, by the same rule as applying them one
after the other: alpha = 1 - (1 - a_new)(1 - a_acc), value = (v_acc a_acc (1 - a_new) + v_new a_new)
/ alpha.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from jaxdissect.errors import check_choice
from jaxdissect.model import Edit


def pool_mask(mask: jax.Array, size: tuple[int, int], pooling: str = "max") -> jax.Array:
  """`[..., H, W]` mask in [0, 1] -> `[..., h, w]` on the featuremap grid (H, W multiples of h, w).

  `pooling` "max": a cell is the largest mask value inside it; "mean": the average.
  """
  check_choice("pooling", pooling, ("max", "mean"))
  mask = jnp.asarray(mask, jnp.float32)
  height, width = mask.shape[-2:]
  h, w = size
  if height % h or width % w:
    raise ValueError(f"mask of {height}x{width} does not tile the {h}x{w} featuremap; "
                     "draw masks at a multiple of the layer's resolution")
  cells = mask.reshape(*mask.shape[:-2], h, height // h, w, width // w)
  reduce = jnp.max if pooling == "max" else jnp.mean
  return reduce(cells, axis=(-3, -1))


def _unit_plane(units: Sequence[int] | jax.Array, num_units: int) -> jax.Array:
  """`[C]` float32 with 1 at `units` (which may also be a `[C]` soft weight vector)."""
  units = jnp.asarray(units)
  if units.ndim == 1 and units.shape[0] == num_units and jnp.issubdtype(units.dtype, jnp.floating):
    return units.astype(jnp.float32)
  return jnp.zeros((num_units,), jnp.float32).at[units.astype(jnp.int32)].set(1.0)


def _spatial(plane: jax.Array, mask: jax.Array | None) -> jax.Array:
  """`[C]` unit plane times an optional `[h, w]` or `[B, h, w]` mask -> broadcastable alpha."""
  if mask is None:
    return plane
  return jnp.asarray(mask, jnp.float32)[..., None] * plane


def ablation(units: Sequence[int] | jax.Array, num_units: int,
             mask: jax.Array | None = None) -> Edit:
  """Zero `units` (indices, or a `[C]` soft alpha) everywhere or inside a pooled `mask`."""
  alpha = _spatial(_unit_plane(units, num_units), mask)
  return Edit(alpha, jnp.zeros((num_units,), jnp.float32))


def insertion(units: Sequence[int] | jax.Array, values: jax.Array, num_units: int,
              mask: jax.Array | None = None) -> Edit:
  """Set `units` to `values` (`[C]` per-unit levels, e.g. each unit's 0.99 quantile).

  Units outside the set keep their activations (their alpha is 0, whatever their value).
  """
  values = jnp.broadcast_to(jnp.asarray(values, jnp.float32), (num_units,))
  alpha = _spatial(_unit_plane(units, num_units), mask)
  return Edit(alpha, values)


def compose(edits: Sequence[Edit]) -> Edit:
  """One edit equal to applying `edits` in order (later ones on top)."""
  if not edits:
    raise ValueError("compose needs at least one edit")
  alpha, value = jnp.asarray(edits[0].alpha), jnp.asarray(edits[0].value)
  for edit in edits[1:]:
    a_new, v_new = jnp.asarray(edit.alpha), jnp.asarray(edit.value)
    merged = 1.0 - (1.0 - a_new) * (1.0 - alpha)
    kept = value * alpha * (1.0 - a_new) + v_new * a_new
    value = jnp.where(merged > 0, kept / jnp.where(merged > 0, merged, 1.0), 0.0)
    alpha = merged
  return Edit(alpha, value)
