"""Running mean, variance and cross-covariance with Chan et al.'s parallel merge.

Summing x and x**2 in float32 loses all precision once the mean is large relative to the spread
(activations around 1e4 with unit variance). Instead each batch is centred on its own mean, and
batch summaries are combined with the pairwise update of Chan, Golub & LeVeque (1979):

  n = na + nb,  d = mean_b - mean_a,  mean = mean_a + d * nb / n,
  M2 = M2_a + M2_b + d**2 * na * nb / n       (cross moment: + outer(d_a, d_b) * na * nb / n).

The same merge combines per-device states, so results agree on 1 or N devices up to float32
rounding. Counts are int32 (at most 2**31 - 1 rows per statistic); means and moments are float32.
Non-finite inputs propagate into means, variances and covariances (visible, not dropped); only
the correlation maps NaN to 0, as the original does for constant features.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdissect.errors import check_shape
from jaxdissect.stats.base import Stat


class MomentsState(NamedTuple):
  """`count []` int32, `mean [C]` float32, `m2 [C]` float32 (sum of squared deviations)."""

  count: jax.Array
  mean: jax.Array
  m2: jax.Array


class Moments(NamedTuple):
  """Result of `moments`: `count []`, `mean [C]`, `var [C]` (NaN where count <= ddof)."""

  count: jax.Array
  mean: jax.Array
  var: jax.Array


class CrossCovarianceState(NamedTuple):
  """`count []` int32; float32 `mean_a [A]`, `mean_b [B]`, `m2_a [A]`, `m2_b [B]`, `cross [A, B]`.

  m2_* are sums of squared deviations from the mean; cross is the sum of their products.
  """

  count: jax.Array
  mean_a: jax.Array
  mean_b: jax.Array
  m2_a: jax.Array
  m2_b: jax.Array
  cross: jax.Array


class CrossCovariance(NamedTuple):
  """Result of `cross_covariance`: `count []`, `covariance [A, B]`, `correlation [A, B]`."""

  count: jax.Array
  covariance: jax.Array
  correlation: jax.Array


def _rows(name: str, x: jax.Array, num_features: int) -> jax.Array:
  """`[..., C]` -> `[N, C]` float32 after checking the trailing size."""
  x = jnp.asarray(x)
  if x.ndim < 1:
    raise ValueError(f"{name} has shape {list(x.shape)}, expected [..., {num_features}]")
  check_shape(name, x.shape[-1:], (num_features,))
  return x.reshape(-1, num_features).astype(jnp.float32)


def _centred_mean(x: jax.Array) -> jax.Array:
  """Column means of `[N, C]`, refined by one correction pass (accurate for large offsets)."""
  mean = jnp.mean(x, axis=0)
  return mean + jnp.mean(x - mean, axis=0)


def _weights(na: jax.Array, nb: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(nb / n, na * nb / n) as float32, 0 when n = 0."""
  na, nb = na.astype(jnp.float32), nb.astype(jnp.float32)
  n = na + nb
  safe = jnp.where(n > 0, n, 1.0)
  return jnp.where(n > 0, nb / safe, 0.0), jnp.where(n > 0, na * nb / safe, 0.0)


def _merge_moments(a: MomentsState, b: MomentsState) -> MomentsState:
  frac_b, scale = _weights(a.count, b.count)
  delta = b.mean - a.mean
  return MomentsState(
      count=a.count + b.count,
      mean=a.mean + delta * frac_b,
      m2=a.m2 + b.m2 + delta**2 * scale,
  )


def _divide_by_dof(total: jax.Array, count: jax.Array, ddof: int) -> jax.Array:
  """total / (count - ddof), NaN where count <= ddof."""
  dof = (count - ddof).astype(jnp.float32)
  return jnp.where(dof > 0, total / jnp.where(dof > 0, dof, 1.0), jnp.nan)


def moments(num_features: int) -> Stat:
  """Running count, mean and variance per feature over rows of `[..., C]`.

  update(state, x [..., C]) -> state; result(state, ddof=1) -> `Moments(count, mean, var)`.
  """

  def init() -> MomentsState:
    zeros = jnp.zeros((num_features,), jnp.float32)
    return MomentsState(jnp.zeros((), jnp.int32), zeros, zeros)

  def update(state: MomentsState, x: jax.Array) -> MomentsState:
    x = _rows("x", x, num_features)
    if x.shape[0] == 0:
      return state
    mean = _centred_mean(x)
    batch = MomentsState(
        count=jnp.asarray(x.shape[0], jnp.int32),
        mean=mean,
        m2=jnp.sum((x - mean) ** 2, axis=0),
    )
    return _merge_moments(state, batch)

  def result(state: MomentsState, ddof: int = 1) -> Moments:
    return Moments(state.count, state.mean, _divide_by_dof(state.m2, state.count, ddof))

  return Stat(init, update, _merge_moments, result)


def _merge_cross(a: CrossCovarianceState, b: CrossCovarianceState) -> CrossCovarianceState:
  frac_b, scale = _weights(a.count, b.count)
  delta_a = b.mean_a - a.mean_a
  delta_b = b.mean_b - a.mean_b
  return CrossCovarianceState(
      count=a.count + b.count,
      mean_a=a.mean_a + delta_a * frac_b,
      mean_b=a.mean_b + delta_b * frac_b,
      m2_a=a.m2_a + b.m2_a + delta_a**2 * scale,
      m2_b=a.m2_b + b.m2_b + delta_b**2 * scale,
      cross=a.cross + b.cross + jnp.outer(delta_a, delta_b) * scale,
  )


def cross_covariance(num_a: int, num_b: int) -> Stat:
  """Running covariance and correlation between paired rows of a `[..., A]` and b `[..., B]`.

  update(state, a [..., A], b [..., B]) with equal leading shapes -> state;
  result(state, ddof=1) -> `CrossCovariance(count, covariance [A, B], correlation [A, B])`,
  correlation = cov / (sd_a sd_b) with NaN (a constant feature) mapped to 0.
  """

  def init() -> CrossCovarianceState:
    za, zb = jnp.zeros((num_a,), jnp.float32), jnp.zeros((num_b,), jnp.float32)
    return CrossCovarianceState(
        jnp.zeros((), jnp.int32), za, zb, za, zb, jnp.zeros((num_a, num_b), jnp.float32)
    )

  def update(state: CrossCovarianceState, a: jax.Array, b: jax.Array) -> CrossCovarianceState:
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.shape[:-1] != b.shape[:-1]:
      raise ValueError(
          f"a has shape {list(a.shape)} and b has shape {list(b.shape)}, expected equal leading "
          f"dimensions ([..., {num_a}] and [..., {num_b}])"
      )
    a, b = _rows("a", a, num_a), _rows("b", b, num_b)
    if a.shape[0] == 0:
      return state
    mean_a, mean_b = _centred_mean(a), _centred_mean(b)
    ca, cb = a - mean_a, b - mean_b
    batch = CrossCovarianceState(
        count=jnp.asarray(a.shape[0], jnp.int32),
        mean_a=mean_a,
        mean_b=mean_b,
        m2_a=jnp.sum(ca**2, axis=0),
        m2_b=jnp.sum(cb**2, axis=0),
        cross=jnp.einsum("na,nb->ab", ca, cb, precision=jax.lax.Precision.HIGHEST),
    )
    return _merge_cross(state, batch)

  def result(state: CrossCovarianceState, ddof: int = 1) -> CrossCovariance:
    cov = _divide_by_dof(state.cross, state.count, ddof)
    sd_a = jnp.sqrt(_divide_by_dof(state.m2_a, state.count, ddof))
    sd_b = jnp.sqrt(_divide_by_dof(state.m2_b, state.count, ddof))
    corr = jnp.nan_to_num(cov / jnp.outer(sd_a, sd_b), nan=0.0, posinf=0.0, neginf=0.0)
    return CrossCovariance(state.count, cov, corr)

  return Stat(init, update, _merge_cross, result)
