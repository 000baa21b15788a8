"""Small causal unit sets found by gradient descent on per-unit coefficients.

Ranking units one at a time misses units that act together. Following GAN Dissection's
`aceoptimize`, a coefficient alpha_u in [0, 1] per unit of a layer is learned through the
differentiable segmenter: ablating the units in proportion to alpha should erase concept c where
it is present, and inserting them (at per-unit levels) should create c where it is absent, while
an L2 penalty (and optionally L1, for sparser, *minimal* sets) keeps alpha small. Units with the
largest alpha are the candidate set; `jaxdissect.causal.ablation_curve` then checks discretely,
on held-out z, how many of them it takes to reach a given effect.

Two parametrisations (`relaxation`):
- "clip": the parameters are alpha itself, projected back to [0, 1] after each Adam step (the
  original's scheme), penalised by l2 |alpha|^2 + l1 |alpha|_1.
- "hard_concrete": the parameters are per-unit log-odds of a hard-concrete gate (Louizos et al.,
  "Learning sparse neural networks through L0 regularization", 2018). Each step samples gates
  that are exactly 0 or 1 with positive probability, and the penalty l0 * E[#open gates] is a
  differentiable count of the units used, so the search prefers *fewer* units rather than
  smaller coefficients. The deterministic gate (`coefficients`) ranks the units afterwards.

Both terms are measured over the whole image: erase on the pixels where the unedited image has
c (soft probability > 0.5), insert on the others. The original measured each at one location,
and its insert term read the location of the wrong image [quirk]; neither is reproduced.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdissect.errors import check_choice
from jaxdissect.model import Edit, Generator, Segmenter, probabilities_of


RELAXATIONS = ("clip", "hard_concrete")

# Hard-concrete constants from Louizos et al. (2018): temperature and the stretch interval.
_BETA, _GAMMA, _ZETA = 2.0 / 3.0, -0.1, 1.1


class Objective(NamedTuple):
  """Weights of the unit-set loss:
  erase - insert + l2 * |alpha|^2 + l1 * |alpha|_1 + l0 * E[number of open gates]."""

  erase: float = 1.0
  insert: float = 1.0
  l2: float = 0.005
  l1: float = 0.0
  l0: float = 0.0


def hard_concrete_sample(log_alpha: jax.Array, key: jax.Array) -> jax.Array:
  """Gates in [0, 1] drawn from the stretched, clipped concrete distribution (reparametrised)."""
  u = jax.random.uniform(key, log_alpha.shape, minval=1e-6, maxval=1.0 - 1e-6)
  s = jax.nn.sigmoid((jnp.log(u) - jnp.log1p(-u) + log_alpha) / _BETA)
  return jnp.clip(s * (_ZETA - _GAMMA) + _GAMMA, 0.0, 1.0)


def expected_open(log_alpha: jax.Array) -> jax.Array:
  """Per-unit probability that the hard-concrete gate is nonzero (the L0 penalty's terms)."""
  return jax.nn.sigmoid(log_alpha - _BETA * np.log(-_GAMMA / _ZETA))


def coefficients(params: jax.Array, relaxation: str = "clip") -> jax.Array:
  """The deterministic per-unit alpha in [0, 1] that parameters stand for."""
  check_choice("relaxation", relaxation, RELAXATIONS)
  if relaxation == "clip":
    return jnp.clip(params, 0.0, 1.0)
  return jnp.clip(jax.nn.sigmoid(params) * (_ZETA - _GAMMA) + _GAMMA, 0.0, 1.0)


def initial_params(alpha: jax.Array, relaxation: str = "clip") -> jax.Array:
  """Parameters whose deterministic coefficients are (about) `alpha` in [0, 1]."""
  check_choice("relaxation", relaxation, RELAXATIONS)
  alpha = jnp.clip(jnp.asarray(alpha, jnp.float32), 0.0, 1.0)
  if relaxation == "clip":
    return alpha
  p = jnp.clip((alpha - _GAMMA) / (_ZETA - _GAMMA), 0.05, 0.95)
  return jnp.log(p) - jnp.log1p(-p)


def loss_fn(gen: Generator, seg: Segmenter, layer: str, concept: int, values: jax.Array,
            objective: Objective = Objective(), relaxation: str = "clip"
            ) -> Callable[[jax.Array, jax.Array, jax.Array], Any]:
  """`loss(params [C], z [B, zdim], key) -> (loss, (erase, insert))`, differentiable in params.

  `key` draws the hard-concrete gates; the "clip" relaxation ignores it.
  """
  check_choice("relaxation", relaxation, RELAXATIONS)
  values = jnp.asarray(values, jnp.float32)
  segment_fn = probabilities_of(seg, "unit-set optimisation")

  def prob(z, edit):
    image, _ = gen.apply_fn(gen.params, z, None if edit is None else {layer: edit}, capture=())
    return segment_fn(seg.params, image)[..., concept]  # [B, H, W]

  def loss(params, z, key):
    if relaxation == "clip":
      alpha, count = params, 0.0
    else:
      alpha, count = hard_concrete_sample(params, key), jnp.sum(expected_open(params))
    present = jax.lax.stop_gradient(prob(z, None) > 0.5).astype(jnp.float32)
    absent = 1.0 - present
    erased = prob(z, Edit(alpha, jnp.zeros_like(values)))
    inserted = prob(z, Edit(alpha, values))
    erase = jnp.sum(erased * present) / (jnp.sum(present) + 1.0)
    insert = jnp.sum(inserted * absent) / (jnp.sum(absent) + 1.0)
    total = (objective.erase * erase - objective.insert * insert
             + objective.l2 * jnp.sum(jnp.square(alpha)) + objective.l1 * jnp.sum(jnp.abs(alpha))
             + objective.l0 * count)
    return total, (erase, insert)

  return loss


class TrainState(NamedTuple):
  """Parameters (alpha, or gate log-odds), optimizer state and the number of steps taken (a
  checkpointable pytree)."""

  params: jax.Array
  opt_state: Any
  step: jax.Array


def make_optimizer(learning_rate: float = 0.01) -> optax.GradientTransformation:
  """Adam, as the original; the projection to [0, 1] is applied after each update."""
  return optax.adam(learning_rate)


def init_state(alpha: jax.Array, optimizer: optax.GradientTransformation,
               relaxation: str = "clip") -> TrainState:
  """The starting state for coefficients about `alpha` (e.g. the IoU ranking, scaled)."""
  params = initial_params(alpha, relaxation)
  return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def step_fn(loss: Callable, optimizer: optax.GradientTransformation, key: jax.Array,
            relaxation: str = "clip") -> Callable:
  """Jitted `step(state, z) -> (state, (loss, erase, insert))`: one Adam step.

  Step t draws its gates from `fold_in(key, t)`, so a resumed run repeats the same draws; the
  "clip" relaxation projects alpha back to [0, 1] after the update.
  """
  check_choice("relaxation", relaxation, RELAXATIONS)

  @jax.jit
  def step(state: TrainState, z: jax.Array):
    step_key = jax.random.fold_in(key, state.step)
    (value, (erase, insert)), grad = jax.value_and_grad(loss, has_aux=True)(
        state.params, z, step_key)
    updates, opt_state = optimizer.update(grad, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if relaxation == "clip":
      params = jnp.clip(params, 0.0, 1.0)
    return TrainState(params, opt_state, state.step + 1), (value, erase, insert)

  return step


def ranking(alpha: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
  """Units by alpha, largest first (ties broken by `tiebreak`, e.g. IoU, largest first)."""
  alpha = np.asarray(alpha)
  tie = np.zeros_like(alpha) if tiebreak is None else np.asarray(tiebreak)
  return np.lexsort((-tie, -alpha))


def smallest_set(removed: np.ndarray, target: float) -> int | None:
  """The smallest k whose removed share reaches `target` (`removed[k]` for k units), or None."""
  hits = np.nonzero(np.asarray(removed) >= target)[0]
  return int(hits[0]) if hits.size else None
