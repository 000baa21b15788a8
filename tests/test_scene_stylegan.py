"""The scene StyleGAN2: shipped weights by name, the original's initialisation, its train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import checkpoint, zoo
from jaxdissect.sceneworld import gan, stylegan
from jaxdissect.zsample import standard_z
from ports import stylegan2

_TINY = stylegan2.Config(z_dim=8, w_dim=8, mapping_features=(8, 8, 8), channels=(8, 8))  # 8x8
_TINY_D = (4, 8)


def test_shipped_generator_loads_by_name_with_the_scene_segmenter():
  generator = zoo.load_generator("sceneworld-stylegan2")
  assert zoo.default_segmenter("sceneworld-stylegan2") == "sceneworld"
  assert generator.layers == stylegan2.layer_names(stylegan.CONFIG)
  assert generator.layers[0] == "b4.conv1" and generator.layers[-1] == "b64.torgb"
  images, acts = generator.apply_fn(generator.params, standard_z(3, 1, stylegan.ZDIM),
                                    capture=("b8.conv1", "b16.conv0.style"))
  assert images.shape == (3, 64, 64, 3)
  assert acts["b8.conv1"].shape == (3, 8, 8, gan.SIZES[2])
  assert acts["b16.conv0.style"].shape == (3, 1, 1, gan.SIZES[2])
  assert np.all(np.isfinite(np.asarray(images)))
  leaves = jax.tree.leaves(generator.params)
  assert all(x.dtype == jnp.float32 for x in leaves)
  assert sum(x.size for x in leaves) < 1e6
  assert np.any(np.asarray(generator.params["mapping"]["w_avg"]) != 0)  # tracked in training


def test_same_channels_per_resolution_as_the_scene_proggan():
  assert stylegan.CONFIG.channels == gan.SIZES[1:]
  assert stylegan.CONFIG.resolution == 64 and stylegan.CONFIG.z_dim == gan.ZDIM


def test_missing_checkpoint_names_path_and_command(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(checkpoint.CheckpointError) as err:
    stylegan.load_generator(missing)
  assert missing in str(err.value)
  assert "python -m experiments.train_scene_gan --arch stylegan2" in str(err.value)


def test_initial_state_dict_follows_the_originals_initialisation():
  cfg = stylegan.CONFIG
  sd = stylegan2.initial_state_dict(cfg, 0)
  assert set(sd) == set(stylegan2.expected_shapes(cfg))
  for key, v in sd.items():
    if key.endswith("affine.bias"):
      np.testing.assert_array_equal(v, 1.0)
    elif key.endswith(("bias", "noise_strength")) or key == "mapping.w_avg":
      np.testing.assert_array_equal(v, 0.0)
    elif key.startswith("mapping.fc"):
      assert np.std(v) == pytest.approx(1 / cfg.mapping_lr_multiplier, rel=0.1)
    elif not key.endswith("resample_filter"):
      assert np.std(v) == pytest.approx(1.0, rel=0.1), key
  again = stylegan2.initial_state_dict(cfg, 0)
  assert all(np.array_equal(sd[k], again[k]) for k in sd)


def test_train_step_moves_w_avg_to_the_mean_w_of_its_generator_batch():
  init = lambda key: stylegan.init_generator_params(key, _TINY)
  state = gan.init_train_state(0, 1e-3, d_sizes=_TINY_D, init_g=init)
  g_before = jax.tree.map(np.array, state.g)
  step = stylegan.make_train_step(_TINY_D, 1e-3, 1.0, 4, 0.9, _TINY)
  reals = np.random.RandomState(2).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
  # The G step's latents, drawn as gan.make_adversarial_step draws them.
  kg = jax.random.split(jax.random.fold_in(state.key, state.step))[1]
  z_g = jax.random.normal(kg, (4, _TINY.z_dim))
  mean_w = np.asarray(stylegan2.mapping_fn(_TINY)(g_before, z_g))[:, 0].mean(axis=0)
  state, metrics = step(state, reals, with_r1=True)
  assert all(np.isfinite(float(v)) for v in metrics.values())
  # w_avg has no gradient at psi = 1, so Adam leaves it and only the running mean moves it.
  np.testing.assert_allclose(state.g["mapping"]["w_avg"], (1 - stylegan.W_AVG_BETA) * mean_w,
                             rtol=1e-5, atol=1e-7)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), g_before, state.g)
  conv = changed["b8"]["conv0"]
  assert not conv.pop("noise_const")  # a buffer in the original: training draws random noise
  assert all(jax.tree.leaves(conv))


def test_training_noise_is_random_but_drawing_uses_the_fixed_noise():
  params = stylegan.init_generator_params(jax.random.PRNGKey(1), _TINY)
  params = jax.tree.map(lambda x: x, params)
  params["b8"]["conv1"]["noise_strength"] = jnp.asarray(1.0)
  z = standard_z(2, 0, _TINY.z_dim)
  generate = stylegan.training_generate(_TINY)
  a = np.asarray(generate(params, z, jax.random.PRNGKey(0))[0])
  b = np.asarray(generate(params, z, jax.random.PRNGKey(1))[0])
  assert not np.allclose(a, b)
  gen = stylegan.make_generator(params, _TINY)
  assert gen.latent_shape == (_TINY.z_dim,)
  assert stylegan.make_generator(params, _TINY, latent_space="w").latent_shape == (_TINY.w_dim,)
  np.testing.assert_array_equal(gen.apply_fn(gen.params, z)[0], gen.apply_fn(gen.params, z)[0])
