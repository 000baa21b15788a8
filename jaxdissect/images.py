"""Images at the model boundary ([-1, 1] floats) turned into pixels, by one rule everywhere.

The report's strips, the paint server's PNGs and tests all need the same uint8 picture of a
generated image; one rounding rule keeps them byte-identical.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_uint8(images: jax.Array) -> jax.Array:
  """Images in [-1, 1] -> uint8 [0, 255], rounded half to even and clipped (jittable)."""
  x = (jnp.asarray(images, jnp.float32) + 1.0) * 127.5
  return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)
