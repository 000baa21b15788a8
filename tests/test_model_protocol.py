"""The model protocol (design §2) as every generator must honour it: edits as data, capture
before the edit, jit/vmap/grad over edits, errors naming the valid layers; and the z sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import planted, zsample
from jaxdissect import Edit, ablate
from ports import proggan

PROGGAN_SIZES = [16, 16, 12, 8]


class World:
  """A generator, a batch of z, a jitted apply and the layer used for edits."""

  def __init__(self, gen, z, edit_layer, downstream):
    self.gen, self.z = gen, z
    self.edit_layer, self.capture = edit_layer, (edit_layer, downstream)
    # Tests call `run(params, z, edits, capture=self.capture)` so compilations are shared.
    self.run = jax.jit(gen.apply_fn, static_argnames="capture")

  def units(self):
    _, acts = jax.eval_shape(lambda p, z: self.gen.apply_fn(p, z, capture=self.edit_layer),
                             self.gen.params, self.z)
    return acts[self.edit_layer].shape[-1]


def _proggan_world():
  gen = proggan.make_generator(PROGGAN_SIZES, jax.random.key(0))
  return World(gen, zsample.standard_z(3, 0, PROGGAN_SIZES[0]), "layer3", "layer5")


def _planted_world():
  gen = planted.make_planted_generator()
  return World(gen, zsample.standard_z(3, 1, planted.ZDIM), "layer2", "layer3")


@pytest.fixture(scope="module", params=["proggan", "planted"])
def world(request):
  return {"proggan": _proggan_world, "planted": _planted_world}[request.param]()


def test_no_edits_is_bit_identical(world):
  p, z, capture = world.gen.params, world.z, world.capture
  plain = jax.make_jaxpr(lambda p, z: world.gen.apply_fn(p, z, capture=capture))(p, z)
  for edits in (None, {}):
    same = jax.make_jaxpr(lambda p, z: world.gen.apply_fn(p, z, edits, capture=capture))(p, z)
    assert str(same) == str(plain), f"edits={edits!r} changes the program"
  with_none, acts_none = world.run(p, z, None, capture=capture)
  with_empty, acts_empty = world.run(p, z, {}, capture=capture)
  np.testing.assert_array_equal(with_none, with_empty)
  for name in capture:
    np.testing.assert_array_equal(acts_none[name], acts_empty[name])


@pytest.mark.parametrize("capture", ["str", "list", "none", "all"])
def test_capture_only_what_is_asked(world, capture):
  layers = world.gen.layers
  arg, want = {"str": (layers[1], {layers[1]}), "list": ([layers[0], layers[-1]],
                                                           {layers[0], layers[-1]}),
               "none": (None, set()), "all": (layers, set(layers))}[capture]
  image, acts = jax.eval_shape(lambda p, z: world.gen.apply_fn(p, z, capture=arg),
                               world.gen.params, world.z)
  assert set(acts) == want
  for name, act in acts.items():
    assert len(act.shape) == 4 and act.shape[0] == world.z.shape[0], (name, act.shape)
  assert image.shape[0] == world.z.shape[0] and image.shape[-1] == 3


def test_ablation_is_captured_before_the_edit_and_flows_on(world):
  k, down = world.capture
  image, acts = world.run(world.gen.params, world.z, None, capture=world.capture)
  units = list(range(world.units()))
  edited, eacts = world.run(world.gen.params, world.z, {k: ablate(units, len(units))},
                            capture=world.capture)
  np.testing.assert_array_equal(eacts[k], acts[k])
  assert np.any(np.asarray(acts[k]) > 0)
  assert not np.allclose(eacts[down], acts[down])
  assert not np.allclose(edited, image)


def test_vmap_over_edits_equals_a_loop(world):
  c = world.units()
  sweep = Edit(jnp.eye(8, c), jnp.zeros((8, c)))
  one = lambda e: world.run(world.gen.params, world.z, {world.edit_layer: e},
                            capture=world.capture)[0]
  batched = jax.jit(jax.vmap(one))(sweep)
  for u in range(8):
    single = one(ablate([u], c))
    np.testing.assert_allclose(batched[u], single, atol=1e-5, err_msg=f"unit {u}")
  assert not np.allclose(batched[0], batched[3])


def test_grad_wrt_soft_alpha_matches_finite_differences(world):
  with jax.enable_x64(True):
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), world.gen.params)
    z = jnp.asarray(world.z, jnp.float64)
    c = world.units()
    weights = jnp.asarray(np.random.default_rng(0).standard_normal((3,)), jnp.float64)

    def loss(alpha):
      edit = Edit(alpha, jnp.full((c,), 0.5, jnp.float64))
      image, _ = world.gen.apply_fn(params, z, {world.edit_layer: edit})
      return jnp.sum(jnp.mean(image, axis=(0, 1, 2)) * weights)

    def grad_and_fd(alpha, steps):
      fd = (jax.vmap(loss)(alpha + steps) - jax.vmap(loss)(alpha - steps)) / (2 * eps)
      return jax.grad(loss)(alpha), fd

    units, eps = [0, 3, 5, 7], 1e-5
    alpha = jnp.linspace(0.2, 0.6, c, dtype=jnp.float64)
    grad, fd = jax.jit(grad_and_fd)(alpha, eps * jnp.eye(c, dtype=jnp.float64)[np.array(units)])
    assert grad.dtype == jnp.float64 and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad[np.array(units)], fd, rtol=1e-4, atol=1e-8)
    assert np.max(np.abs(grad)) > 1e-4  # not vacuous


def test_jit_traces_once_for_same_shapes(world):
  traces = []
  c = world.units()

  def fn(params, z, edits):
    traces.append(1)
    return world.gen.apply_fn(params, z, edits, capture=world.edit_layer)

  jitted = jax.jit(fn)
  for seed in range(3):
    z = zsample.standard_z(world.z.shape[0], 10 + seed, world.z.shape[1])
    jitted(world.gen.params, z, {world.edit_layer: ablate([seed], c)})
  assert len(traces) == 1
  jax.eval_shape(jitted, world.gen.params, z[:1], {world.edit_layer: ablate([0], c)})
  assert len(traces) == 2  # the counter does see a new shape


def test_unknown_layer_names_raise_with_valid_names(world):
  layers = world.gen.layers
  with pytest.raises(ValueError, match="'nope'") as err:
    world.gen.apply_fn(world.gen.params, world.z, capture=["nope"])
  assert all(repr(n) in str(err.value) for n in layers)
  with pytest.raises(ValueError, match="'layer99'") as err:
    world.gen.apply_fn(world.gen.params, world.z, {"layer99": ablate([0], 4)})
  assert all(repr(n) in str(err.value) for n in layers)


def test_mis_sized_edit_raises_naming_the_layer(world):
  c, k = world.units(), world.edit_layer
  with pytest.raises(ValueError, match=rf"edit alpha of {k} has shape \[{c + 1}\], which does "
                     rf"not broadcast to the layer's shape \[3, \d+, \d+, {c}\]"):
    jax.eval_shape(lambda p, z: world.gen.apply_fn(p, z, {k: ablate([0], c + 1)}),
                   world.gen.params, world.z)
  with pytest.raises(ValueError, match=rf"edit value of {k} has shape \[2, 3, 1, 1, 1\]"):
    bad = Edit(1.0, jnp.zeros((2, 3, 1, 1, 1)))
    jax.eval_shape(lambda p, z: world.gen.apply_fn(p, z, {k: bad}), world.gen.params, world.z)


def test_bad_z_raises_naming_shape(world):
  dim = world.z.shape[1]
  with pytest.raises(ValueError, match=rf"z has shape \[2, {dim + 1}\], expected \[\?, {dim}\]"):
    world.gen.apply_fn(world.gen.params, np.zeros((2, dim + 1), np.float32))
  with pytest.raises(ValueError, match=rf"z has shape \[{dim}\], expected \[\?, {dim}\]"):
    world.gen.apply_fn(world.gen.params, np.zeros((dim,), np.float32))
  with pytest.raises(ValueError, match=rf"z has dtype int32 \(shape \[2, {dim}\]\)"):
    world.gen.apply_fn(world.gen.params, np.zeros((2, dim), np.int32))


# --- z samples ------------------------------------------------------------------------------

def test_standard_z_is_the_original_sampling_and_prefix_stable():
  z = zsample.standard_z(5, 7, dim=6)
  want = np.random.RandomState(7).standard_normal(30).reshape(5, 6).astype(np.float32)
  np.testing.assert_array_equal(z, want)
  assert z.dtype == np.float32 and z.shape == (5, 6)
  np.testing.assert_array_equal(zsample.standard_z(3, 7, dim=6), z[:3])
  assert zsample.standard_z(2, 1).shape == (2, 512)
  assert not np.array_equal(zsample.standard_z(2, 8, dim=6), z[:2])


@pytest.mark.parametrize("n, batch", [(10, 3), (10, 5), (10, 10), (10, 64), (1, 1), (0, 4)])
def test_z_batches_equal_standard_z(n, batch):
  full = zsample.standard_z(n, 3, dim=7)
  got = list(zsample.z_batches(n, 3, batch, dim=7))
  assert [s for s, _ in got] == list(range(0, n, batch))
  assert all(b.shape[0] <= batch for _, b in got)
  joined = np.concatenate([b for _, b in got]) if got else np.zeros((0, 7), np.float32)
  np.testing.assert_array_equal(joined, full)


def test_z_batches_bad_arguments():
  with pytest.raises(ValueError, match="batch_size is 0"):
    next(zsample.z_batches(4, 0, 0))
  with pytest.raises(ValueError, match="n is -1"):
    zsample.standard_z(-1, 0)
