"""The scene GAN: shipped weights load by name, clear errors, a sane critic, a train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import checkpoint
from jaxdissect.sceneworld import gan
from jaxdissect.zsample import standard_z
from ports import proggan

_TINY = (8, 8, 8)          # an 8x8 ProgGAN: layer1 .. layer4, output_8x8
_TINY_D = (4, 8)           # its 8x8 discriminator


def test_shipped_generator_loads_by_default_path():
  generator = gan.load_generator()
  assert generator.layers == proggan.layer_names(gan.SIZES)
  assert generator.layers[0] == "layer1" and generator.layers[-1] == "output_64x64"
  assert set(generator.params) == set(generator.layers)
  images, acts = generator.apply_fn(generator.params, standard_z(3, 1, gan.ZDIM),
                                    capture=("layer4",))
  assert images.shape == (3, 64, 64, 3)
  assert acts["layer4"].shape == (3, 8, 8, gan.SIZES[2])
  assert np.all(np.isfinite(np.asarray(images)))


def test_shipped_generator_is_small_float32():
  params = gan.load_generator().params
  leaves = jax.tree.leaves(params)
  assert all(x.dtype == jnp.float32 for x in leaves)
  assert sum(x.size for x in leaves) * 4 < 20e6


def test_missing_checkpoint_names_path_and_command(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(checkpoint.CheckpointError) as err:
    gan.load_generator(missing)
  assert missing in str(err.value)
  assert "python -m experiments.train_scene_gan" in str(err.value)


def test_discriminator_logits_and_finite_grad():
  params = gan.init_discriminator_params(jax.random.PRNGKey(0), _TINY_D)
  disc = gan.Discriminator(_TINY_D)
  images = np.random.RandomState(1).uniform(-1, 1, (8, 8, 8, 3)).astype(np.float32)

  @jax.jit
  def logits_and_grad(p):
    logits = disc.apply({"params": p}, images)
    return logits, jax.grad(lambda q: jnp.sum(disc.apply({"params": q}, images)))(p)

  logits, grads = logits_and_grad(params)
  assert logits.shape == (8,)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


def test_discriminator_default_resolution_is_64():
  assert gan.resolution_of(gan.D_SIZES) == proggan.resolution(gan.SIZES) == 64


def test_minibatch_stddev_appends_one_constant_channel():
  x = np.random.RandomState(0).standard_normal((8, 4, 4, 5)).astype(np.float32)
  y = np.asarray(jax.jit(gan.minibatch_stddev)(x))
  assert y.shape == (8, 4, 4, 6)
  np.testing.assert_array_equal(y[..., :5], x)
  assert np.ptp(np.asarray(y[0, ..., 5])) == 0


def test_train_step_runs_and_changes_params():
  state = gan.init_train_state(0, 1e-3, _TINY, _TINY_D)
  before = jax.tree.map(np.array, (state.g, state.d, state.ema))
  step = gan.make_train_step(_TINY, _TINY_D, 1e-3, 1.0, 4, 0.9)
  reals = np.random.RandomState(2).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
  state, metrics = step(state, reals, with_r1=True)
  assert int(state.step) == 1
  assert all(np.isfinite(float(v)) for v in metrics.values())
  for old, new in zip(before, (state.g, state.d, state.ema)):
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), old, new)
    assert any(jax.tree.leaves(changed))
