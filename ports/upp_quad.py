"""The quad labels of the unified-parsing segmenter: every object region split into halves.

netdissect labels, besides each pixel's object, the top/bottom and left/right half of the
bounding box of the connected object region it lies in (`{object}-t`, `-b`, `-l`, `-r`). This
module finds the 8-connected regions in jit (`connected_components`) and makes those two label
channels (`quad_split`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxdissect.errors import check_shape


def _neighbour_min(ids: jax.Array, labels: jax.Array, none: int) -> jax.Array:
  """Minimum of `ids` over each pixel's 8-neighbourhood (itself included) with the same label."""
  h, w = labels.shape[-2:]
  pad = ((0, 0), (1, 1), (1, 1))
  ids_p = jnp.pad(ids, pad, constant_values=none)
  lab_p = jnp.pad(labels, pad, constant_values=-1)
  out = ids
  for dy in range(3):
    for dx in range(3):
      same = lab_p[:, dy:dy + h, dx:dx + w] == labels
      out = jnp.minimum(out, jnp.where(same, ids_p[:, dy:dy + h, dx:dx + w], none))
  return out


@jax.jit
def connected_components(labels: jax.Array) -> jax.Array:
  """Component ids of `[B, h, w]` integer maps: 8-connected regions of one nonzero value.

  A pixel's id is the raster index `y * w + x` of its component's first pixel in raster order
  (so ids sort components as skimage's `label` numbers them); background (0) gets `h * w`.
  Min-label propagation with pointer jumping, in a `lax.while_loop` until nothing changes.
  """
  check_shape("label map", labels.shape, (None, None, None))
  b, h, w = labels.shape
  none = h * w
  flat = jnp.broadcast_to(jnp.arange(h * w, dtype=jnp.int32).reshape(1, h, w), labels.shape)
  ids = jnp.where(labels > 0, flat, none)

  def step(state):
    ids, _ = state
    new = _neighbour_min(ids, labels, none)
    table = jnp.concatenate([new.reshape(b, -1), jnp.full((b, 1), none, jnp.int32)], 1)
    new = jnp.take_along_axis(table, new.reshape(b, -1), 1).reshape(b, h, w)
    return new, jnp.any(new != ids)

  ids, _ = jax.lax.while_loop(lambda s: s[1], step, step((ids, True)))
  return jax.lax.stop_gradient(ids)


@functools.partial(jax.jit, static_argnames=("num_objects", "original_quad_quirk"))
def quad_split(objects: jax.Array, num_objects: int, *,
               original_quad_quirk: bool = False) -> jax.Array:
  """Channels 3 and 4 of the quad labelling of `[B, h, w]` object labels: `[B, h, w, 2]`.

  For each connected component with bounding box rows `top..bottom`, cols `left..right`:
  `vmid = (top + bottom + 1) // 2`, `hmid = (left + right + 1) // 2`; channel 3 is `l + N` above
  `vmid` ('t') else `l + 3N` ('b'); channel 4 is `l + 2N` left of `hmid` ('l') else `l + 4N`
  ('r'); background 0. Every component is split; `original_quad_quirk=True` reproduces
  netdissect, which leaves the last component (in raster order of first pixels) of each image
  unsplit (0 in both channels).
  """
  objects = objects.astype(jnp.int32)
  b, h, w = objects.shape
  ids = connected_components(objects)
  rows = jnp.broadcast_to(jnp.arange(h, dtype=jnp.int32)[None, :, None], objects.shape)
  cols = jnp.broadcast_to(jnp.arange(w, dtype=jnp.int32)[None, None, :], objects.shape)

  def per_image(ids, rows, cols):
    seg = ids.reshape(-1)
    box = [jax.ops.segment_min(rows.reshape(-1), seg, h * w + 1),
           jax.ops.segment_max(rows.reshape(-1), seg, h * w + 1),
           jax.ops.segment_min(cols.reshape(-1), seg, h * w + 1),
           jax.ops.segment_max(cols.reshape(-1), seg, h * w + 1)]
    return [v[seg].reshape(h, w) for v in box]

  top, bottom, left, right = jax.vmap(per_image)(ids, rows, cols)
  vmid, hmid = (top + bottom + 1) // 2, (left + right + 1) // 2
  n = num_objects
  ch3 = objects + jnp.where(rows < vmid, n, 3 * n)
  ch4 = objects + jnp.where(cols < hmid, 2 * n, 4 * n)
  split = objects > 0
  if original_quad_quirk:
    last = jnp.max(jnp.where(split, ids, -1), axis=(1, 2), keepdims=True)
    split &= ids != last
  return jnp.stack([jnp.where(split, ch3, 0), jnp.where(split, ch4, 0)], -1)
