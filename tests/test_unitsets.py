"""Gradient search for causal unit sets recovers the planted world's colour units."""

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
  step = unitsets.step_fn(loss, optimizer)
  z = zsample.standard_z(8 * 60, 10, planted.ZDIM).reshape(60, 8, -1)
  first = None
  for batch in z:
    state, (value, _, _) = step(state, jnp.asarray(batch))
    first = float(value) if first is None else first
  alpha = np.asarray(state.alpha)
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
  assert float(sparse(alpha, z)[0]) == pytest.approx(float(plain(alpha, z)[0]) + 0.1 * 4.0,
                                                     rel=1e-5)


def test_ranking_and_smallest_set():
  np.testing.assert_array_equal(unitsets.ranking([0.2, 0.9, 0.2, 0.5], [0.1, 0, 0.3, 0]),
                                [1, 3, 2, 0])
  assert unitsets.smallest_set([0.0, 0.3, 0.55, 0.8], 0.5) == 2
  assert unitsets.smallest_set([0.0, 0.3], 0.5) is None
