"""The planted world: its units provably cause its colour concepts, and dissection by IoU finds
them (the ground truth every end-to-end test of the pipeline can rely on)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import planted, zsample
from jaxdissect import Edit, ablate

CONCEPT_INDEX = {name: i for i, (name, _) in enumerate(planted.CONCEPTS)}


@pytest.fixture(scope="module")
def world():
  gen, seg = planted.make_planted_generator(), planted.make_oracle_segmenter()
  run = jax.jit(gen.apply_fn, static_argnames="capture")
  labels = jax.jit(seg.label_fn)
  return gen, seg, run, labels


@pytest.fixture(scope="module")
def z():
  return zsample.standard_z(8, 1, planted.ZDIM)


def _cells_to_pixels(x):
  return np.repeat(np.repeat(np.asarray(x), planted.SCALE, 1), planted.SCALE, 2)


def _edit(unit, alpha, value):
  """An edit of one layer2 unit: `alpha` `[8, 8]` (or scalar) spatial, `value` a level."""
  onehot = jnp.zeros(planted.UNITS).at[unit].set(1.0)
  return Edit(jnp.asarray(alpha)[..., None] * onehot, value * onehot)


def test_layers_and_planted_table():
  gen = planted.make_planted_generator()
  assert gen.layers == planted.LAYERS
  names = [n for n, _ in planted.CONCEPTS]
  assert names[0] == "-" and set(planted.PLANTED) <= set(names)
  assert all(layer == "layer2" for layer, _ in planted.PLANTED.values())


def test_concept_pixels_are_exactly_where_the_unit_fires(world, z):
  gen, seg, run, labels = world
  image, acts = run(gen.params, z, None, capture=("layer2",))
  lab = np.asarray(labels(seg.params, image))[..., 0]
  assert image.shape == (8, 32, 32, 3) and lab.dtype == np.int32
  for concept, (layer, unit) in planted.PLANTED.items():
    fires = _cells_to_pixels(acts[layer][..., unit] > 0)
    np.testing.assert_array_equal(lab == CONCEPT_INDEX[concept], fires, err_msg=concept)
    assert fires.any(), f"{concept} never appears in the sample"


@pytest.mark.parametrize("concept", sorted(planted.PLANTED))
def test_ablating_the_planted_unit_removes_its_concept_only(world, z, concept):
  gen, seg, run, labels = world
  layer, unit = planted.PLANTED[concept]
  c = CONCEPT_INDEX[concept]
  before = np.asarray(labels(seg.params, run(gen.params, z, None, capture=())[0]))
  edited, _ = run(gen.params, z, {layer: ablate([unit], planted.UNITS)}, capture=())
  after = np.asarray(labels(seg.params, edited))
  assert np.any(before == c) and not np.any(after == c)
  others = before != c
  np.testing.assert_array_equal(after[others], before[others])
  assert np.all(after[before == c] == 0)


def test_distractor_units_never_change_the_image(world, z):
  gen, _, run, _ = world
  distractors = [u for u in range(planted.UNITS) if u not in planted.COLOUR_UNITS]
  assert planted.DECOY[1] in distractors
  image, _ = run(gen.params, z, None, capture=())
  edited, _ = run(gen.params, z, {"layer2": ablate(distractors, planted.UNITS)}, capture=())
  np.testing.assert_array_equal(edited, image)


@pytest.mark.parametrize("concept", sorted(planted.PLANTED))
def test_inserting_the_unit_in_a_mask_adds_its_concept_there(world, z, concept):
  gen, seg, run, labels = world
  layer, unit = planted.PLANTED[concept]
  mask = np.zeros((planted.GRID, planted.GRID), np.float32)
  mask[2:5, 1:6] = 1.0
  before = np.asarray(labels(seg.params, run(gen.params, z, None, capture=())[0]))[..., 0]
  edited, _ = run(gen.params, z, {layer: _edit(unit, mask, 10.0)}, capture=())
  after = np.asarray(labels(seg.params, edited))[..., 0]
  inside = np.broadcast_to(_cells_to_pixels(mask[None] > 0), after.shape)
  assert np.all(after[inside] == CONCEPT_INDEX[concept])
  np.testing.assert_array_equal(after[~inside], before[~inside])
  assert np.mean(before[inside] == CONCEPT_INDEX[concept]) < 0.5  # the edit did the work


def _iou_table(acts, lab, quantile=0.99):
  """IoU `[units, concepts]` of top-quantile upsampled activations with the concept masks."""
  b, h, w = lab.shape
  up = np.asarray(jax.image.resize(acts, (b, h, w, acts.shape[-1]), "linear"))
  flat = up.reshape(-1, up.shape[-1])
  on = flat > np.quantile(flat, quantile, axis=0)
  table = np.zeros((flat.shape[1], len(planted.CONCEPTS)))
  for c in range(table.shape[1]):
    seg = lab.reshape(-1) == c
    table[:, c] = (on & seg[:, None]).sum(0) / np.maximum((on | seg[:, None]).sum(0), 1)
  return table


def test_iou_ranks_the_planted_unit_first_with_a_clear_margin(world):
  gen, seg, run, labels = world
  image, acts = run(gen.params, zsample.standard_z(1000, 2, planted.ZDIM), None,
                    capture=("layer2",))
  iou = _iou_table(acts["layer2"], np.asarray(labels(seg.params, image))[..., 0])
  for concept, (_, unit) in planted.PLANTED.items():
    column = iou[:, CONCEPT_INDEX[concept]]
    runner_up = np.max(np.delete(column, unit))
    assert np.argmax(column) == unit, (concept, column)
    assert column[unit] > 0.2 and column[unit] > 1.5 * runner_up, (concept, column)
  red = iou[:, CONCEPT_INDEX["red"]]
  assert red[planted.DECOY[1]] == np.max(np.delete(red, planted.PLANTED["red"][1]))


def test_soft_segmentation_agrees_with_labels_and_is_differentiable(world, z):
  gen, seg, run, labels = world
  image, _ = run(gen.params, z, None, capture=())
  probs = jax.jit(seg.segment_fn)(seg.params, image)
  assert probs.shape == image.shape[:3] + (len(planted.CONCEPTS),)
  np.testing.assert_allclose(np.sum(probs, -1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(np.argmax(probs, -1), np.asarray(labels(seg.params, image))[..., 0])


def test_soft_ablation_gradient_points_at_the_planted_unit(world, z):
  gen, seg, _, _ = world
  red = CONCEPT_INDEX["red"]

  def red_mass(alpha):
    image, _ = gen.apply_fn(gen.params, z, {"layer2": Edit(alpha, jnp.zeros(planted.UNITS))})
    return jnp.mean(seg.segment_fn(seg.params, image)[..., red])

  grad = jax.jit(jax.grad(red_mass))(jnp.full((planted.UNITS,), 0.1))
  assert np.all(np.isfinite(grad))
  assert np.argmin(grad) == planted.PLANTED["red"][1] and grad[planted.PLANTED["red"][1]] < 0
  distractors = [u for u in range(planted.UNITS) if u not in planted.COLOUR_UNITS]
  np.testing.assert_array_equal(np.asarray(grad)[distractors], 0.0)
