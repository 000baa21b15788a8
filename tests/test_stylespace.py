"""Style-channel dissection (StyleSpace gradient maps) and the StyleGAN2 sampling options.

(a) the maps equal reverse-mode Jacobians and finite differences on a tiny random StyleGAN2;
(b) a hand-made generator whose style channels each brighten one known region is dissected by
the unchanged engine, and each channel gets that region's concept; (c) `experiments.dissect`
dissects a feature map and a style layer of a tiny NVlabs `.pkl` in w space with random noise.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli_support import subprocess_env
from jaxdissect import dissect, stylespace, zsample
from jaxdissect.model import Edit, Generator, label_only
from ports import stylegan2 as sg
from test_stylegan2_pkl import CFG as PKL_CFG, stand_ins, write_snapshot  # noqa: F401

TINY = sg.config(16, z_dim=8, w_dim=8, channel_base=64, channel_max=8, mapping_layers=2)
STYLE = "b8.conv0.style"


@pytest.fixture(scope="module")
def tiny():
  gen = sg.make_generator(TINY, 3, truncation_psi=0.7)
  z = zsample.standard_z(2, 1, TINY.z_dim)
  return gen, z


def _jacobian_maps(gen, z, layer, edits=None):
  """`sum_rgb |d image / d s_c|` from a reverse-mode Jacobian (jax.jacrev), image by image."""
  edits = dict(edits or {})
  s = gen.apply_fn(gen.params, z, edits, capture=(layer,))[1][layer]
  if layer in edits:
    s = edits[layer].value * edits[layer].alpha + s * (1 - edits[layer].alpha)
  image_of = lambda s: gen.apply_fn(gen.params, z, {**edits, layer: Edit(1.0, s)})[0]  # noqa: E731
  jac = jax.jit(jax.jacrev(image_of))(s)
  jac = np.asarray(jac)[:, :, :, :, :, 0, 0, :]  # [B, H, W, 3, B, C]: images do not mix
  return np.abs(np.einsum("bhwkbc->bhwkc", jac)).sum(3)


def test_gradient_maps_equal_jacobian_and_finite_differences(tiny):
  gen, z = tiny
  wrapped = stylespace.with_style_maps(gen, (STYLE, "b16.torgb.style"), chunk=3)
  assert wrapped.layers == gen.layers + (STYLE, "b16.torgb.style")
  run = jax.jit(wrapped.apply_fn, static_argnames="capture")
  image, acts = run(wrapped.params, z, capture=(STYLE, "b8.conv1", "b16.torgb.style"))
  np.testing.assert_allclose(image, gen.apply_fn(gen.params, z)[0], atol=1e-5)  # jit vs eager
  np.testing.assert_allclose(acts["b8.conv1"], gen.apply_fn(
      gen.params, z, capture="b8.conv1")[1]["b8.conv1"], atol=1e-5)
  for layer, channels in ((STYLE, 8), ("b16.torgb.style", 4)):
    maps = np.asarray(acts[layer])
    assert maps.shape == (2, 16, 16, channels)
    ref = _jacobian_maps(gen, z, layer)
    assert np.max(np.abs(maps - ref)) <= 1e-5 * np.max(ref), layer
    assert np.min(maps.reshape(-1, channels).max(0)) > 0  # every channel draws somewhere
  # Central finite differences of one channel, in float32 (step 1e-2; the LeakyReLU kinks and
  # float32 rounding leave errors of a few 1e-3 of the largest value).
  s = gen.apply_fn(gen.params, z, capture=(STYLE,))[1][STYLE]
  e = 1e-2 * jax.nn.one_hot(5, 8)
  up = gen.apply_fn(gen.params, z, {STYLE: Edit(1.0, s + e)})[0]
  down = gen.apply_fn(gen.params, z, {STYLE: Edit(1.0, s - e)})[0]
  fd = np.abs(np.asarray(up - down) / 2e-2).sum(-1)
  assert np.max(np.abs(fd - np.asarray(acts[STYLE])[..., 5])) <= 5e-3 * np.max(fd)
  # Pooled maps are the mean of the full ones; an edit of the style layer moves the maps.
  pooled = stylespace.with_style_maps(gen, (STYLE,), size=4)
  small = jax.jit(pooled.apply_fn, static_argnames="capture")(pooled.params, z,
                                                             capture=(STYLE,))[1][STYLE]
  np.testing.assert_allclose(small, maps_mean := acts[STYLE].reshape(2, 4, 4, 4, 4, 8)
                             .mean((2, 4)), rtol=1e-5, atol=1e-6 * float(np.max(maps_mean)))
  edit = {STYLE: Edit(jax.nn.one_hot(2, 8), 3.0)}
  edited = run(wrapped.params, z, edit, capture=(STYLE,))[1][STYLE]
  np.testing.assert_allclose(edited, _jacobian_maps(gen, z, STYLE, edit), rtol=1e-4,
                             atol=1e-5 * float(np.max(edited)))


def test_style_layers_are_checked(tiny):
  gen, _ = tiny
  with pytest.raises(ValueError, match="not as a style vector"):
    stylespace.with_style_maps(gen._replace(layers=gen.layers[:1]), ("b8.conv0",))
  with pytest.raises(ValueError, match="b8.conv2.style"):
    stylespace.with_style_maps(gen, ("b8.conv2.style",))
  with pytest.raises(ValueError, match="feature-map layer"):
    stylespace.with_style_maps(gen, ("b8.conv0",))
  with pytest.raises(ValueError, match="does not divide"):
    stylespace.with_style_maps(gen, (STYLE,), size=5)
  assert stylespace.split_layers(("b8.conv0", STYLE), gen) == (STYLE,)
  with pytest.raises(ValueError, match="unknown layer 'b8.conv9'"):
    stylespace.split_layers(("b8.conv9",), gen)


def test_w_space_and_latent_keyed_noise(tiny):
  gen, z = tiny
  sd = sg.random_state_dict(TINY, 3)
  w_gen = sg.from_state_dict(sd, truncation_psi=0.7, latent_space="w")
  assert w_gen.latent_shape == (TINY.w_dim,)
  w = sg.seeded_w(gen, 2, 1)
  np.testing.assert_array_equal(w, gen.apply_fn(gen.params, z, capture="w")[1]["w"][:, 0, 0])
  np.testing.assert_allclose(w_gen.apply_fn(w_gen.params, w)[0], gen.apply_fn(gen.params, z)[0],
                             atol=1e-5)
  noisy = sg.from_state_dict(sd, noise="random", noise_seed=4)
  a = noisy.apply_fn(noisy.params, z)[0]
  b = noisy.apply_fn(noisy.params, z[::-1])[0][::-1]  # the same latent, another batch position
  np.testing.assert_array_equal(a, b)
  assert float(jnp.max(jnp.abs(a - gen.apply_fn(gen.params, z)[0]))) > 1e-3
  other = sg.from_state_dict(sd, noise="random", noise_seed=5).apply_fn(noisy.params, z)[0]
  assert float(jnp.max(jnp.abs(a - other))) > 1e-4


# --- (b) planted style channels ------------------------------------------------------------------

SIZE = 16
REGIONS = ("-", "left", "top-right", "bottom-right")


def _region_masks():
  m = np.zeros((4, SIZE, SIZE), np.float32)
  m[1, :, :SIZE // 2] = 1
  m[2, :SIZE // 2, SIZE // 2:] = 1
  m[3, SIZE // 2:, SIZE // 2:] = 1
  return m


def _planted_style_generator():
  """Style `s.style` = 2 + z[:, :3] (3 channels); channel c scales the region c + 1 of a fixed
  random texture, so d image / d s_c is nonzero exactly in that region. One feature map
  `f` (the image's mean colour) is the ordinary layer."""
  masks = jnp.asarray(_region_masks()[1:])  # [3, H, W]
  texture = jnp.asarray(np.random.default_rng(0).uniform(0.2, 1.0, (SIZE, SIZE, 3)), jnp.float32)
  layers = ("f",)

  def apply_fn(params, z, edits=None, capture=None):
    edits, capture = dict(edits or {}), tuple(capture or ())
    s = 2.0 + z[:, None, None, :3]
    acts = {"s.style": s} if "s.style" in capture else {}
    if "s.style" in edits:
      s = s * (1 - edits["s.style"].alpha) + edits["s.style"].value * edits["s.style"].alpha
    field = jnp.einsum("bc,chw->bhw", s[:, 0, 0, :], masks)
    image = jnp.tanh(field[..., None] * texture * params["gain"] + z[:, None, None, 3:6] * 0.1)
    if "f" in capture:
      acts["f"] = jnp.mean(image, axis=(1, 2), keepdims=True)
    return image, acts

  return Generator(apply_fn, {"gain": jnp.float32(0.5)}, layers, (6,))


def test_planted_style_channels_get_their_regions():
  gen = stylespace.with_style_maps(_planted_style_generator(), ("s.style",))
  masks = _region_masks()
  labels = np.argmax(masks, 0).astype(np.int32)[None, :, :, None]  # every pixel one region
  seg = label_only(lambda p, x: jnp.broadcast_to(labels, (x.shape[0], *labels.shape[1:])),
                   {}, [(r, "region") for r in REGIONS])
  # q = 0.25 of a region's pixels at most: the top quarter of the map lies inside the region.
  config = dissect.Config(layers=("s.style", "f"), n=40, batch_size=20, threshold=0.2)
  r = dissect.dissect(gen, seg, config)["s.style"]
  assert [REGIONS[k] for k in r.label] == ["left", "top-right", "bottom-right"]
  np.testing.assert_allclose(r.best_iou, [0.4, 0.8, 0.8], atol=0.02)


# --- (c) the command line ------------------------------------------------------------------------


def test_dissect_cli_feature_map_and_style_layer(tmp_path, stand_ins):  # noqa: F811
  path = tmp_path / "network-snapshot.pkl"
  write_snapshot(path, sg.random_state_dict(PKL_CFG, 5), stand_ins, tmp_path / "marker")
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "experiments.dissect", "--quiet", f"--model=stylegan2:{path}",
         "--model_arg=latent_space=w", "--model_arg=noise=random",
         "--model_arg=truncation_psi=0.7",
         "--segmenter=color", "--layers=b8.conv1,b8.conv0.style", "--n=12", "--batch_size=6",
         "--warmup=6", "--style_map_size=8", "--style_chunk=8", "--tile=16", "--topk=2",
         "--max_passes=1", "--forward_chunk=0", "--images=false",
         f"--outdir={out}"]
  env = subprocess_env(tmp_path / "cache")
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=170, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  doc = json.loads((out / "dissect.json").read_text())
  layers = {rec["layer"]: rec for rec in doc["layers"]}
  assert list(layers) == ["b8.conv1", "b8.conv0.style"]
  assert layers["b8.conv1"]["shape"] == [8, 8, 8]
  assert layers["b8.conv0.style"]["shape"] == [8, 8, 8]  # 8 style channels, 8x8 pooled maps
  assert len(layers["b8.conv0.style"]["units"]) == 8
  assert doc["settings"]["model_args"]["latent_space"] == "w"
  assert doc["settings"]["z"]["origin"] == "seed 1 z sample mapped to w"
  assert doc["settings"]["style_map_size"] == 8 and "StyleSpace" in doc["settings"]["style_maps"]
  assert os.path.exists(out / "b8.conv0.style" / "iou.npy")
  assert os.path.exists(out / "report.html")
  assert not (tmp_path / "marker").exists()
