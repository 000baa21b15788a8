"""Interventions and average causal effects, checked on the planted world's known causes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import causal, intervene, planted, zsample
from jaxdissect.model import apply_edit

RED, GREEN, BLUE = 1, 2, 3
N, BATCH = 120, 40


@pytest.fixture(scope="module")
def world():
  return planted.make_planted_generator(), planted.make_oracle_segmenter()


def _fractions(world, z, edits=None):
  gen, seg = world
  image, _ = gen.apply_fn(gen.params, z, edits, capture=())
  return np.asarray(causal.concept_fractions(seg.label_fn(seg.params, image), 4))


def test_pool_mask_matches_numpy():
  rng = np.random.RandomState(0)
  mask = (rng.rand(2, 32, 32) > 0.8).astype(np.float32)
  cells = mask.reshape(2, 8, 4, 8, 4)
  np.testing.assert_array_equal(intervene.pool_mask(mask, (8, 8), "max"), cells.max((2, 4)))
  np.testing.assert_allclose(intervene.pool_mask(mask, (8, 8), "mean"), cells.mean((2, 4)))
  with pytest.raises(ValueError, match="does not tile"):
    intervene.pool_mask(mask, (5, 5))
  with pytest.raises(ValueError, match="pooling"):
    intervene.pool_mask(mask, (8, 8), "median")


def test_compose_equals_applying_in_order():
  rng = np.random.RandomState(1)
  x = jnp.asarray(rng.randn(2, 4, 4, 6), jnp.float32)
  edits = [intervene.ablation([1, 2], 6, mask=jnp.asarray(rng.rand(4, 4), jnp.float32)),
           intervene.insertion([2, 5], jnp.arange(6.0), 6, mask=jnp.asarray(rng.rand(4, 4))),
           intervene.ablation(jnp.asarray(rng.rand(6), jnp.float32), 6)]
  sequential = x
  for edit in edits:
    sequential = apply_edit(sequential, edit)
  np.testing.assert_allclose(apply_edit(x, intervene.compose(edits)), sequential, atol=1e-5)


def test_ablating_the_red_unit_removes_all_red(world):
  gen, seg = world
  unit = planted.PLANTED["red"][1]
  effect = causal.average_effect(gen, seg, "layer2", intervene.ablation([unit], planted.UNITS),
                                 n=N, batch_size=BATCH, seed=3)
  z = zsample.standard_z(N, 3, planted.ZDIM)
  base = _fractions(world, z)
  assert effect.n == N
  np.testing.assert_allclose(effect.baseline, base.mean(0), atol=1e-7)
  np.testing.assert_allclose(effect.edited[RED], 0.0, atol=1e-9)
  np.testing.assert_allclose(effect.delta[RED], -base[:, RED].mean(), atol=1e-7)
  expected_ci = causal.Z99 * base[:, RED].std(ddof=1) / np.sqrt(N)
  np.testing.assert_allclose(effect.ci99[RED], expected_ci, rtol=1e-6)
  assert effect.delta[RED] + effect.ci99[RED] < 0  # significant
  np.testing.assert_allclose(effect.delta[[GREEN, BLUE]], 0.0, atol=1e-9)


def test_inserting_green_in_a_mask_paints_green_there(world):
  gen, seg = world
  unit = planted.PLANTED["green"][1]
  mask = np.zeros((32, 32), np.float32)
  mask[8:16, 8:20] = 1.0  # 2 x 3 cells
  cells = intervene.pool_mask(mask, (planted.GRID, planted.GRID))
  edit = intervene.insertion([unit], jnp.full((planted.UNITS,), 5.0), planted.UNITS, mask=cells)
  z = zsample.standard_z(8, 4, planted.ZDIM)
  image, _ = gen.apply_fn(gen.params, z, {"layer2": edit}, capture=())
  labels = np.asarray(seg.label_fn(seg.params, image))[..., 0]
  assert np.all(labels[:, mask > 0] == GREEN)


def test_vmapped_sweep_equals_a_loop_of_single_effects(world):
  gen, seg = world
  sweep = causal.single_unit_effects(gen, seg, "layer2", planted.UNITS, n=N, batch_size=BATCH,
                                     seed=5, chunk=3)  # 3 chunks, 1 padded
  assert sweep.delta.shape == (planted.UNITS, 4)
  for u in range(planted.UNITS):
    one = causal.average_effect(gen, seg, "layer2", intervene.ablation([u], planted.UNITS),
                                n=N, batch_size=BATCH, seed=5)
    np.testing.assert_allclose(sweep.delta[u], one.delta, atol=1e-9)
    np.testing.assert_allclose(sweep.ci99[u], one.ci99, atol=1e-9)
  for concept, (_, unit) in planted.PLANTED.items():
    column = sweep.delta[:, [RED, GREEN, BLUE][list(planted.PLANTED).index(concept)]]
    assert np.argmin(column) == unit and column[unit] < 0
  distractors = [u for u in range(planted.UNITS) if u not in planted.COLOUR_UNITS]
  np.testing.assert_array_equal(sweep.delta[distractors], 0.0)  # the decoy causes nothing


def test_soft_alpha_gradient_reaches_the_effect(world):
  gen, seg = world
  z = jnp.asarray(zsample.standard_z(16, 6, planted.ZDIM))

  def red_mass(alpha):
    image, _ = gen.apply_fn(gen.params, z, {"layer2": intervene.ablation(alpha, planted.UNITS)},
                            capture=())
    return jnp.mean(seg.segment_fn(seg.params, image)[..., RED])

  grad = jax.grad(red_mass)(jnp.full((planted.UNITS,), 0.5, jnp.float32))
  assert np.argmin(np.asarray(grad)) == planted.PLANTED["red"][1]


def test_ablation_curve_removes_red_with_its_first_unit(world):
  gen, seg = world
  order = [planted.PLANTED["red"][1], planted.DECOY[1], 0, 2]
  curve = causal.ablation_curve(gen, seg, "layer2", order, planted.UNITS, max_units=4, n=N,
                                batch_size=BATCH, seed=7, chunk=2)
  removed, ci = causal.removed_fraction(curve, RED)
  np.testing.assert_allclose(removed, [0.0, 1.0, 1.0, 1.0, 1.0], atol=1e-9)
  assert ci.shape == (5,) and ci[0] == 0.0
  reverse = causal.ablation_curve(gen, seg, "layer2", order[::-1], planted.UNITS, max_units=4,
                                  n=N, batch_size=BATCH, seed=7)
  np.testing.assert_allclose(causal.removed_fraction(reverse, RED)[0], [0, 0, 0, 0, 1], atol=1e-9)


def test_insertion_context_matches_a_direct_count(world):
  gen, seg = world
  unit = planted.PLANTED["green"][1]
  alpha = jnp.zeros(planted.UNITS).at[unit].set(1.0)
  values = jnp.full((planted.UNITS,), 5.0)
  ctx = causal.insertion_context(gen, seg, "layer2", alpha, values, GREEN, (8, 8), n=12,
                                 batch_size=6, seed=8, chunk=24)
  z = zsample.standard_z(12, 8, planted.ZDIM)
  base = _fractions(world, z)[:, GREEN]
  image, _ = gen.apply_fn(gen.params, z, capture=())
  labels = np.asarray(seg.label_fn(seg.params, image))[..., 0]
  sums, counts = np.zeros(4), np.zeros(4)
  for y in range(8):
    for x in range(8):
      mask = np.zeros((8, 8, 1), np.float32)
      mask[y, x] = 1.0
      edit = intervene.insertion([unit], values, planted.UNITS, mask=mask[..., 0])
      delta = _fractions(world, z, {"layer2": edit})[:, GREEN] - base
      context = labels[:, 4 * y + 2, 4 * x + 2]
      for b, label in enumerate(context):
        if label:
          sums[label] += delta[b]
          counts[label] += 1
  np.testing.assert_array_equal(ctx.count[1:], counts[1:])
  seen = counts > 0
  np.testing.assert_allclose(ctx.mean[seen], sums[seen] / counts[seen], atol=1e-7)
  # Green painted over an existing green cell adds nothing; over red or blue it adds a cell.
  if counts[GREEN]:
    assert abs(ctx.mean[GREEN]) < 1e-9
  assert ctx.mean[RED] == pytest.approx(1 / 64, abs=1e-6)


def test_conditional_means_match_a_direct_average(world):
  gen, seg = world
  got = causal.conditional_means(gen, seg, "layer2", GREEN, n=40, batch_size=20, seed=6)
  z = zsample.standard_z(40, 6, planted.ZDIM)
  image, acts = gen.apply_fn(gen.params, z, None, capture=("layer2",))
  labels = np.asarray(seg.label_fn(seg.params, image))[..., 0]
  maps = np.asarray(jax.image.resize(acts["layer2"], (40, *labels.shape[1:], planted.UNITS),
                                     "bilinear"))  # half-pixel centres, as dissection
  where = labels == GREEN
  np.testing.assert_allclose(got, maps[where].mean(0), rtol=1e-4, atol=1e-5)
  assert np.argmax(got) == planted.PLANTED["green"][1]


def test_masked_ablation_measured_inside_the_mask(world):
  gen, seg = world
  unit = planted.PLANTED["red"][1]
  stroke = np.zeros((32, 32), np.float32)
  stroke[:16] = 1.0  # the top half of every image
  cells = intervene.pool_mask(stroke, (planted.GRID, planted.GRID))
  effect = causal.single_unit_effects(gen, seg, "layer2", planted.UNITS, n=40, batch_size=20,
                                      seed=7, mask=cells, region=stroke)
  z = zsample.standard_z(40, 7, planted.ZDIM)
  edit = intervene.ablation([unit], planted.UNITS, mask=cells)
  gen_, seg_ = world
  image, _ = gen_.apply_fn(gen_.params, z, {"layer2": edit}, capture=())
  labels = np.asarray(seg_.label_fn(seg_.params, image))[..., 0]
  base_image, _ = gen_.apply_fn(gen_.params, z, None, capture=())
  base = np.asarray(seg_.label_fn(seg_.params, base_image))[..., 0]
  inside = lambda lab: (lab[:, :16] == RED).mean()
  np.testing.assert_allclose(effect.baseline[unit, RED], inside(base), atol=1e-7)
  np.testing.assert_allclose(effect.edited[unit, RED], inside(labels), atol=1e-7)
  assert effect.edited[unit, RED] == 0.0 and (labels[:, 16:] == RED).any()  # only inside
