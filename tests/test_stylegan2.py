"""StyleGAN2 port: parity with the NVlabs reference code on random weights, and the protocol.

`tests/data/stylegan2_golden.npz` holds what `NVlabs/stylegan2-ada-pytorch`'s own `Generator`
computed for the weights `ports.stylegan2.random_state_dict(cfg, seed)` (regenerated here, not
stored): w, the image, every conv / toRGB output and every style vector (how it was made:
`tests/data/stylegan2_golden.md`). Large activations are stored as 4,096 values at the flat NHWC
indices `(i * 7919) % size`, which cover every channel and position stride.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect.model import Edit
from ports import stylegan2 as sg

GOLDEN = pathlib.Path(__file__).parent / "data" / "stylegan2_golden.npz"
TOL = 1e-4
SAMPLE, PRIME = 4096, 7919

CONFIGS = {
    "r64": (sg.config(64, z_dim=32, w_dim=32, channel_base=1024, channel_max=32,
                      mapping_layers=8), 64, dict(truncation_psi=1.0)),
    "r256": (sg.config(256, z_dim=64, w_dim=64, channel_base=2048, channel_max=64,
                       mapping_layers=4, conv_clamp=1.5), 256, dict(truncation_psi=0.7)),
}


@pytest.fixture(scope="module")
def golden():
  with np.load(GOLDEN) as data:
    return dict(data)


def _sample(a):
  flat = np.asarray(a).reshape(-1)
  if flat.size <= SAMPLE:
    return flat
  return flat[(np.arange(SAMPLE, dtype=np.int64) * PRIME) % flat.size]


def _err(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("tag", sorted(CONFIGS))
def test_parity_with_reference(golden, tag):
  cfg, seed, options = CONFIGS[tag]
  gen = sg.make_generator(cfg, seed, **options)
  z = golden[f"{tag}/z"]
  names = gen.layers + sg.style_layers(cfg)
  image, acts = jax.jit(gen.apply_fn, static_argnames="capture")(gen.params, z, capture=names)
  errors = {"ws": _err(sg.mapping_fn(cfg, **options)(gen.params, z), golden[f"{tag}/ws"]),
            "image": _err(image, golden[f"{tag}/image"])}
  for name in names:
    errors[name] = _err(_sample(acts[name]), golden[f"{tag}/act/{name}"])
  if tag == "r64":  # truncation with a cutoff, and no noise
    for key, kw in (("image_psi0.7_cutoff4", dict(truncation_psi=0.7, truncation_cutoff=4)),
                    ("image_noise_none", dict(noise="none"))):
      errors[key] = _err(sg.make_apply_fn(cfg, **kw)(gen.params, z)[0], golden[f"{tag}/{key}"])
  worst = max(errors, key=errors.get)
  assert errors[worst] <= TOL, f"{tag}: {worst} differs by {errors[worst]:.3g}; all: {errors}"
  assert np.std(golden[f"{tag}/image"]) > 0.5  # the golden exercises a non-trivial image


TINY = sg.config(16, z_dim=8, w_dim=8, channel_base=64, channel_max=8, mapping_layers=2)


@pytest.fixture(scope="module")
def tiny():
  gen = sg.make_generator(TINY, 3)
  z = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
  return gen, z


def test_layers_and_w_index():
  assert sg.layer_names(TINY) == ("b4.conv1", "b4.torgb", "b8.conv0", "b8.conv1", "b8.torgb",
                                  "b16.conv0", "b16.conv1", "b16.torgb")
  assert sg.style_layers(TINY)[2] == "b8.conv0.style"
  assert sg.w_index(TINY) == {"b4.conv1": 0, "b4.torgb": 1, "b8.conv0": 1, "b8.conv1": 2,
                              "b8.torgb": 3, "b16.conv0": 3, "b16.conv1": 4, "b16.torgb": 5}
  assert TINY.num_ws == 6 and TINY.channels == (8, 8, 4)


def test_capture_is_pre_edit_and_edits_act(tiny):
  gen, z = tiny
  base, acts = gen.apply_fn(gen.params, z, capture=("b8.conv0", "b8.conv0.style"))
  assert acts["b8.conv0"].shape == (2, 8, 8, 8) and acts["b8.conv0.style"].shape == (2, 1, 1, 8)
  alpha = jnp.zeros(8).at[:4].set(1.0)
  for layer in ("b8.conv0", "b8.conv0.style"):
    out, edited = gen.apply_fn(gen.params, z, {layer: Edit(alpha, 0.0)}, capture=(layer,))
    np.testing.assert_array_equal(edited[layer], acts[layer])  # captured before the edit
    assert _err(out, base) > 1e-3
    same, _ = gen.apply_fn(gen.params, z, {layer: Edit(jnp.zeros(8), 5.0)})
    np.testing.assert_allclose(same, base, atol=1e-6)
  # ablating a whole conv layer's output leaves only what later layers add
  _, later = gen.apply_fn(gen.params, z, {"b8.conv1": Edit(1.0, 0.0)}, capture=("b16.conv0",))
  _, ref = gen.apply_fn(gen.params, z, capture=("b16.conv0",))
  assert _err(later["b16.conv0"], ref["b16.conv0"]) > 1e-3


def test_style_edit_is_differentiable(tiny):
  gen, z = tiny

  def loss(alpha):
    img, _ = gen.apply_fn(gen.params, z, {"b16.conv1.style": Edit(alpha, 0.0)})
    return jnp.mean(img ** 2)

  g = jax.jit(jax.grad(loss))(jnp.full(4, 0.5))
  assert g.shape == (4,) and np.all(np.isfinite(g)) and np.any(g != 0)


def test_noise_modes(tiny):
  gen, z = tiny
  rand = sg.make_apply_fn(TINY, noise="random")
  jitted = jax.jit(rand)
  a, _ = jitted(gen.params, z, noise_key=jax.random.key(1))
  b, _ = jitted(gen.params, z, noise_key=jax.random.key(1))
  c, _ = jitted(gen.params, z, noise_key=jax.random.key(2))
  np.testing.assert_array_equal(a, b)
  assert _err(a, c) > 1e-4
  with pytest.raises(ValueError, match="noise_key is required with noise='random'"):
    rand(gen.params, z)
  with pytest.raises(ValueError, match="noise_key is only used"):
    gen.apply_fn(gen.params, z, noise_key=jax.random.key(1))
  with pytest.raises(ValueError, match="unknown noise mode 'fixed'"):
    sg.make_apply_fn(TINY, noise="fixed")


def test_bad_layer_names_list_valid_ones(tiny):
  gen, z = tiny
  with pytest.raises(ValueError, match=r"unknown layer 'b8.conv2'.*'b8.conv0.style'"):
    gen.apply_fn(gen.params, z, capture=("b8.conv2",))


def test_converter_names_bad_keys():
  sd = sg.random_state_dict(TINY, 0)
  del sd["synthesis.b8.conv1.noise_const"]
  sd["synthesis.b8.extra"] = np.zeros(1, np.float32)
  with pytest.raises(ValueError, match=r"missing key\(s\) \['synthesis.b8.conv1.noise_const'\]"
                     r".*unexpected key\(s\) \['synthesis.b8.extra'\]"):
    sg.convert_state_dict(sd, TINY)
  sd = sg.random_state_dict(TINY, 0)
  sd["mapping.embed.weight"] = np.zeros((8, 4), np.float32)
  with pytest.raises(ValueError, match="class-conditional"):
    sg.config_from_state_dict(sd)
  sd = sg.random_state_dict(TINY, 0)
  sd["synthesis.b8.resample_filter"] = np.eye(4, dtype=np.float32)
  with pytest.raises(ValueError, match="synthesis.b8.resample_filter differs"):
    sg.convert_state_dict(sd, TINY)
