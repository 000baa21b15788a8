"""ProgGAN port: forward against an independent numpy (NCHW) reading of the spec, the LSUN layer
table, and the netdissect state-dict converter."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect.model import Generator
from ports import proggan

# All channel counts distinct, so a swapped in/out axis shows up as a shape error.
SIZES = [24, 16, 12, 8]  # zdim 24; 4x4: 16 ch, 8x8: 12 ch, 16x16: 8 ch; output 16x16


def _torch_layout_state_dict(sizes, seed=0):
  """A synthetic netdissect state dict: weights (O, I, k, k) ~ N(0, 1), biases ~ N(0, 0.1)."""
  rng = np.random.default_rng(seed)
  sd, n = {}, 2 * (len(sizes) - 1)
  for i in range(1, n + 1):
    level = (i + 1) // 2  # 1 for the 4x4 layers 1-2, 2 for the 8x8 layers 3-4, ...
    c_out = sizes[level]
    c_in = sizes[0] if i == 1 else sizes[level] if i % 2 == 0 else sizes[level - 1]
    k = 4 if i == 1 else 3
    sd[f"layer{i}.conv.weight"] = rng.standard_normal((c_out, c_in, k, k)).astype(np.float32)
    sd[f"layer{i}.wscale.b"] = (0.1 * rng.standard_normal(c_out)).astype(np.float32)
  r = 4 * 2 ** (len(sizes) - 2)
  sd[f"output_{r}x{r}.conv.weight"] = rng.standard_normal((3, sizes[-1], 1, 1)).astype(np.float32)
  sd[f"output_{r}x{r}.wscale.b"] = (0.1 * rng.standard_normal(3)).astype(np.float32)
  return sd


# --- Independent numpy reference, NCHW, float64, straight from the spec's formulas -----------

def _np_pixel_norm(x):
  return x / np.sqrt(np.mean(x ** 2, axis=1, keepdims=True) + 1e-8)


def _np_conv(x, w, pad):
  """Cross-correlation of x (N, I, H, W) with w (O, I, k, k), zero padding `pad`, stride 1."""
  k = w.shape[-1]
  xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  h, wd = xp.shape[2] - k + 1, xp.shape[3] - k + 1
  out = np.zeros((x.shape[0], w.shape[0], h, wd))
  for ky in range(k):
    for kx in range(k):
      out += np.einsum("nihw,oi->nohw", xp[:, :, ky:ky + h, kx:kx + wd], w[:, :, ky, kx])
  return out


def _np_forward(sd, z):
  """Returns (image NCHW, {layer: act NCHW}) for a torch-layout state dict."""
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  x = np.asarray(z, np.float64)[:, :, None, None]
  acts, i = {}, 1
  while f"layer{i}.conv.weight" in sd:
    w, b = sd[f"layer{i}.conv.weight"], sd[f"layer{i}.wscale.b"]
    x = _np_pixel_norm(x)
    if i >= 3 and i % 2:
      x = x.repeat(2, axis=2).repeat(2, axis=3)
    scale = (math.sqrt(2) / w.shape[-1]) / math.sqrt(w.shape[1])
    x = _np_conv(x, w, 3 if i == 1 else 1) * scale + b[None, :, None, None]
    x = acts[f"layer{i}"] = np.where(x > 0, x, 0.2 * x)
    i += 1
  (out,) = [k[:-len(".conv.weight")] for k in sd if k.startswith("output_") and "conv" in k]
  w, b = sd[f"{out}.conv.weight"], sd[f"{out}.wscale.b"]
  x = acts[out] = _np_conv(_np_pixel_norm(x), w, 0) / math.sqrt(w.shape[1]) + b[None, :, None, None]
  return x, acts


def _nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module")
def z():
  return np.random.default_rng(1).standard_normal((3, SIZES[0])).astype(np.float32)


def _run(gen, z, capture=None):
  """Jitted forward (much faster to compile on CPU than op by op); captures all by default."""
  fn = jax.jit(gen.apply_fn, static_argnames="capture")
  return fn(gen.params, z, capture=gen.layers if capture is None else capture)


def test_converted_weights_match_numpy_reference(z):
  sd = _torch_layout_state_dict(SIZES)
  gen = proggan.from_state_dict(sd)
  image, acts = _run(gen, z)
  ref_image, ref_acts = _np_forward(sd, z)
  assert set(acts) == set(ref_acts) == set(gen.layers)
  for name in gen.layers:
    err = np.max(np.abs(_nchw(acts[name]) - ref_acts[name]))
    assert err <= 1e-4, f"{name}: max abs error {err}"
  assert np.max(np.abs(_nchw(image) - ref_image)) <= 1e-4


def test_random_init_matches_numpy_reference(z):
  gen = proggan.make_generator(SIZES, jax.random.key(3))
  image, _ = _run(gen, z)
  ref_image, _ = _np_forward(proggan.export_state_dict(gen.params), z)
  assert np.max(np.abs(_nchw(image) - ref_image)) <= 1e-4
  assert float(np.std(ref_image)) > 0.1  # the check is not vacuous


def test_random_init_is_unit_normal_kernels_and_zero_biases():
  params = proggan.make_generator([64, 64, 64], jax.random.key(0)).params
  kernels = np.concatenate([np.ravel(p["kernel"]) for p in params.values()])
  assert abs(kernels.mean()) < 0.02 and abs(kernels.std() - 1) < 0.02
  assert all(not np.any(p["bias"]) for p in params.values())
  again = proggan.make_generator([64, 64, 64], jax.random.key(0)).params
  assert all(np.array_equal(params[n]["kernel"], again[n]["kernel"]) for n in params)


def test_layer1_is_the_dense_form_of_the_padded_conv():
  sd = _torch_layout_state_dict(SIZES)
  gen = proggan.from_state_dict(sd)
  z = np.random.default_rng(2).standard_normal((2, SIZES[0])).astype(np.float32)
  _, acts = _run(gen, z, capture="layer1")
  zn = z / np.sqrt(np.mean(z.astype(np.float64) ** 2, axis=1, keepdims=True) + 1e-8)
  w = sd["layer1.conv.weight"]
  dense = np.einsum("oiyx,bi->byxo", w[:, :, ::-1, ::-1], zn) * math.sqrt(2) / 4 / math.sqrt(
      SIZES[0]) + sd["layer1.wscale.b"]
  np.testing.assert_allclose(acts["layer1"], np.where(dense > 0, dense, 0.2 * dense), atol=1e-5)


def test_lsun_layer_table_by_eval_shape():
  sizes = proggan.LSUN_SIZES
  layers = proggan.layer_names(sizes)
  assert layers == tuple(f"layer{i}" for i in range(1, 15)) + ("output_256x256",)
  params = jax.eval_shape(lambda k: proggan.make_generator(sizes, k).params, jax.random.key(0))
  gen = Generator(proggan.make_apply_fn(sizes), params, layers, (sizes[0],))
  z = jax.ShapeDtypeStruct((2, 512), jnp.float32)
  image, acts = jax.eval_shape(lambda p, z: gen.apply_fn(p, z, capture=layers), params, z)
  table = {1: (4, 512), 3: (8, 512), 5: (16, 512), 7: (32, 256), 9: (64, 128), 11: (128, 64),
           13: (256, 32)}
  for first, (res, ch) in table.items():
    for i in (first, first + 1):
      assert acts[f"layer{i}"].shape == (2, res, res, ch), f"layer{i}"
  assert acts["output_256x256"].shape == image.shape == (2, 256, 256, 3)
  assert params["layer1"]["kernel"].shape == (4, 4, 512, 512)


def test_layer_names_small_and_celebahq():
  assert proggan.layer_names([8, 8]) == ("layer1", "layer2", "output_4x4")
  assert proggan.layer_names(proggan.CELEBAHQ_SIZES)[-1] == "output_1024x1024"
  with pytest.raises(ValueError, match="too short"):
    proggan.layer_names([512])


def test_output_is_unclamped_unless_hardtanh(z):
  sd = _torch_layout_state_dict(SIZES)
  sd["output_16x16.wscale.b"] = np.full(3, 5.0, np.float32)
  gen, clamping = proggan.from_state_dict(sd), proggan.from_state_dict(sd, hardtanh=True)
  image, _ = _run(gen, z, capture=())
  assert float(jnp.max(image)) > 1.0
  clamped, _ = _run(clamping, z, capture=())
  assert float(jnp.max(clamped)) <= 1.0
  np.testing.assert_array_equal(clamped, jnp.clip(image, -1, 1))


# --- Converter ------------------------------------------------------------------------------

def test_converter_round_trip_and_layout():
  sd = _torch_layout_state_dict(SIZES)
  params = proggan.convert_state_dict(sd)
  assert set(params) == set(proggan.layer_names(SIZES))
  assert params["layer3"]["kernel"].shape == (3, 3, 16, 12)
  np.testing.assert_array_equal(params["layer3"]["kernel"][1, 2, 5, 7],
                                sd["layer3.conv.weight"][7, 5, 1, 2])
  back = proggan.export_state_dict(params)
  assert set(back) == set(sd)
  for key in sd:
    np.testing.assert_array_equal(back[key], sd[key], err_msg=key)


def _legacy(sd):
  out = {}
  for key, value in sd.items():
    if key.startswith("layer"):
      i, rest = key[len("layer"):].split(".", 1)
      out[f"features.{int(i) - 1}.{rest}"] = value
    else:
      out["output." + key.split(".", 1)[1]] = value
  return out


@pytest.mark.parametrize("wrap", [lambda sd: sd, lambda sd: {"state_dict": sd}, _legacy,
                                  lambda sd: {"state_dict": _legacy(sd)}],
                         ids=["plain", "wrapped", "legacy", "wrapped-legacy"])
def test_converter_accepts_wrapper_and_legacy_names(wrap):
  sd = _torch_layout_state_dict(SIZES)
  assert proggan.sizes_from_state_dict(wrap(sd)) == SIZES
  params = proggan.convert_state_dict(wrap(sd))
  expected = proggan.convert_state_dict(sd)
  assert set(params) == set(expected)
  for name in expected:
    for field in ("kernel", "bias"):
      np.testing.assert_array_equal(params[name][field], expected[name][field])


def test_sizes_from_lsun_like_state_dict_shapes():
  sd = {}
  sizes = proggan.LSUN_SIZES
  for name, shape in proggan.torch_weight_shapes(sizes).items():
    sd[f"{name}.conv.weight"] = np.broadcast_to(np.float32(0), shape)
    sd[f"{name}.wscale.b"] = np.zeros(shape[0], np.float32)
  assert proggan.sizes_from_state_dict(sd) == list(sizes)


@pytest.mark.parametrize("change, message", [
    (lambda sd: sd.pop("layer3.wscale.b"), "missing key.*'layer3.wscale.b'"),
    (lambda sd: sd.pop("output_16x16.conv.weight"), "missing key.*'output_16x16.conv.weight'"),
    (lambda sd: sd.update({"layer2.conv.bias": np.zeros(16)}),
     "unexpected key.*'layer2.conv.bias'"),
    (lambda sd: sd.update({"layer4.wscale.b": np.zeros(5)}), r"layer4.wscale.b has shape \[5\]"),
    (lambda sd: sd.update({"layer2.conv.weight": np.zeros((16, 16, 1, 1))}),
     r"layer2.conv.weight has shape \[16, 16, 1, 1\], expected \[16, 16, 3, 3\]"),
    (lambda sd: sd.pop("layer6.conv.weight"), "even, nonzero number"),
])
def test_converter_errors_name_the_key(change, message):
  sd = _torch_layout_state_dict(SIZES)
  change(sd)
  with pytest.raises(ValueError, match=message):
    proggan.convert_state_dict(sd)


# --- Optional parity against a tiny torch reference -----------------------------------------

def test_parity_with_torch_reference(z):
  torch = pytest.importorskip("torch", reason="torch not installed (optional parity extra)")
  sd = _torch_layout_state_dict(SIZES)
  t = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}
  x = torch.from_numpy(z).view(z.shape[0], -1, 1, 1)
  norm = lambda x: x / torch.sqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-8)
  with torch.no_grad():
    i = 1
    while f"layer{i}.conv.weight" in t:
      w = t[f"layer{i}.conv.weight"]
      x = norm(x)
      if i >= 3 and i % 2:
        x = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
      x = torch.nn.functional.conv2d(x, w, padding=3 if i == 1 else 1)
      x = x * (math.sqrt(2) / w.shape[-1] / math.sqrt(w.shape[1]))
      x = torch.nn.functional.leaky_relu(x + t[f"layer{i}.wscale.b"].view(1, -1, 1, 1), 0.2)
      i += 1
    w = t["output_16x16.conv.weight"]
    x = torch.nn.functional.conv2d(norm(x), w) / math.sqrt(w.shape[1])
    x = x + t["output_16x16.wscale.b"].view(1, -1, 1, 1)
  image, _ = _run(proggan.from_state_dict(sd), z, capture=())
  assert np.max(np.abs(_nchw(image) - x.numpy())) <= 1e-4
