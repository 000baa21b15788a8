"""Gradient search for causal unit sets recovers the planted world's colour units."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import planted, unitsets, zsample


@pytest.mark.parametrize("concept", ["red", "blue"])
def test_coefficients_converge_on_the_planted_unit(concept):
  gen = planted.make_planted_generator()
  seg = planted.make_oracle_segmenter(temperature=1.0)  # soft enough for useful gradients
  index = [name for name, _ in planted.CONCEPTS].index(concept)
  loss = unitsets.loss_fn(gen, seg, "layer2", index, jnp.full((planted.UNITS,), 3.0))
  optimizer = unitsets.make_optimizer(0.05)
  state = unitsets.init_state(jnp.full((planted.UNITS,), 0.5), optimizer)  # no hint from IoU
  step = unitsets.step_fn(loss, optimizer, jax.random.key(0))
  z = zsample.standard_z(8 * 60, 10, planted.ZDIM).reshape(60, 8, -1)
  first = None
  for batch in z:
    state, (value, _, _) = step(state, jnp.asarray(batch))
    first = float(value) if first is None else first
  alpha = np.asarray(state.params)
  unit = planted.PLANTED[concept][1]
  assert int(state.step) == 60 and float(value) < first
  assert unitsets.ranking(alpha)[0] == unit and alpha[unit] > 0.9
  assert np.max(np.delete(alpha, unit)) < 0.1


def test_l1_pulls_useless_units_to_zero_faster():
  gen = planted.make_planted_generator()
  seg = planted.make_oracle_segmenter(temperature=1.0)
  z = jnp.asarray(zsample.standard_z(8, 11, planted.ZDIM))
  alpha = jnp.full((planted.UNITS,), 0.5)
  plain = unitsets.loss_fn(gen, seg, "layer2", 1, jnp.full((planted.UNITS,), 3.0))
  sparse = unitsets.loss_fn(gen, seg, "layer2", 1, jnp.full((planted.UNITS,), 3.0),
                            unitsets.Objective(l1=0.1))
  assert float(sparse(alpha, z, None)[0]) == pytest.approx(float(plain(alpha, z, None)[0]) + 0.1 * 4.0,
                                                     rel=1e-5)


def test_ranking_and_smallest_set():
  np.testing.assert_array_equal(unitsets.ranking([0.2, 0.9, 0.2, 0.5], [0.1, 0, 0.3, 0]),
                                [1, 3, 2, 0])
  assert unitsets.smallest_set([0.0, 0.3, 0.55, 0.8], 0.5) == 2
  assert unitsets.smallest_set([0.0, 0.3], 0.5) is None


def test_hard_concrete_open_probability_matches_sampling():
  log_alpha = jnp.array([-3.0, -1.0, 0.0, 1.0, 3.0])
  keys = jax.random.split(jax.random.key(0), 20000)
  gates = jax.vmap(lambda k: unitsets.hard_concrete_sample(log_alpha, k))(keys)
  assert float(gates.min()) == 0.0 and float(gates.max()) == 1.0  # exact zeros and ones occur
  np.testing.assert_allclose(np.mean(np.asarray(gates) > 0, axis=0),
                             unitsets.expected_open(log_alpha), atol=0.01)
  # Closed form of P(gate > 0) = P(s > -gamma / (zeta - gamma)) for the binary concrete s.
  beta, gamma, zeta = 2 / 3, -0.1, 1.1
  t = -gamma / (zeta - gamma)
  closed = 1 / (1 + np.exp(-(np.asarray(log_alpha) - beta * np.log(t / (1 - t)))))
  np.testing.assert_allclose(unitsets.expected_open(log_alpha), closed, rtol=1e-5)


def test_hard_concrete_initial_params_round_trip():
  alpha = jnp.array([0.1, 0.5, 0.9])
  params = unitsets.initial_params(alpha, "hard_concrete")
  np.testing.assert_allclose(unitsets.coefficients(params, "hard_concrete"), alpha, atol=1e-6)
  np.testing.assert_allclose(unitsets.coefficients(unitsets.initial_params(alpha)), alpha)
  with pytest.raises(ValueError, match="relaxation"):
    unitsets.coefficients(alpha, "l0")


def test_hard_concrete_l0_keeps_exactly_the_planted_unit_open():
  gen = planted.make_planted_generator()
  seg = planted.make_oracle_segmenter(temperature=1.0)
  index = [name for name, _ in planted.CONCEPTS].index("blue")
  loss = unitsets.loss_fn(gen, seg, "layer2", index, jnp.full((planted.UNITS,), 3.0),
                          unitsets.Objective(l2=0.0, l0=0.02), "hard_concrete")
  optimizer = unitsets.make_optimizer(0.1)
  state = unitsets.init_state(jnp.full((planted.UNITS,), 0.5), optimizer, "hard_concrete")
  step = unitsets.step_fn(loss, optimizer, jax.random.key(1), "hard_concrete")
  for batch in zsample.standard_z(8 * 80, 12, planted.ZDIM).reshape(80, 8, -1):
    state, _ = step(state, jnp.asarray(batch))
  alpha = np.asarray(unitsets.coefficients(state.params, "hard_concrete"))
  unit = planted.PLANTED["blue"][1]
  assert np.flatnonzero(alpha > 0.5).tolist() == [unit]  # the minimal set: planted size 1
  assert unitsets.ranking(alpha)[0] == unit
