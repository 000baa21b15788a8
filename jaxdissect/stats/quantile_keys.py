"""The quantile sketch's order-preserving int32 keys, shared by its state and both kernel sets.

The sketch (`jaxdissect.stats.quantile`) stores float32 values as int32 keys whose integer order
is the float order, so sorting and comparing never touch floats; `EMPTY` marks a hole or a free
slot. The numpy kernels (`quantile_cpu`), the jnp kernels (`quantile_jnp`) and the sketch itself
must agree on these to the bit, so they live here once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

EMPTY = np.iinfo(np.int32).max  # key of a hole or free slot; larger than the key of +inf
LOWEST = np.iinfo(np.int32).min  # below every key: the running maximum of no value
KEY_POS_INF = int(np.float32(np.inf).view(np.int32))  # keys of finite values lie strictly
KEY_NEG_INF = int(np.float32(-np.inf).view(np.int32)) ^ 0x7FFFFFFF  # between these two


def to_key(x: jax.Array) -> jax.Array:
  """Maps float32 to int32 so that integer order equals float order (-0.0 sorts before 0.0)."""
  b = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
  return jnp.where(b < 0, b ^ jnp.int32(0x7FFFFFFF), b)


def from_key(k: jax.Array) -> jax.Array:
  """Inverse of `to_key`."""
  b = jnp.where(k < 0, k ^ jnp.int32(0x7FFFFFFF), k)
  return jax.lax.bitcast_convert_type(b, jnp.float32)
