"""Adapters turn unmodified Linen / NNX modules and tapped functions into protocol generators.

The user models below know nothing of jaxdissect. Each is checked against an independent source
of truth: Linen's own `capture_intermediates`, the NNX submodules called by hand, and forward
passes written out submodule by submodule with the edit applied in between.
"""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdissect import Edit, adapters, causal, dissect, zsample

ZDIM = 8
CONCEPTS = (("-", "none"), ("red", "color"), ("blue", "color"))


def _up(x):
  return jax.image.resize(x, (x.shape[0], 2 * x.shape[1], 2 * x.shape[2], x.shape[3]), "nearest")


# ---- The users' models: no jaxdissect imports, no edits or capture threaded through. ----


class Block(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Conv(self.features, (3, 3), name="conv")(_up(x)))


class LinenGen(nn.Module):
  """z [B, 8] -> 4x4x16 -> block1 (8x8) -> mid conv twice (shared) -> block2 (16x16) -> RGB."""

  @nn.compact
  def __call__(self, z):
    x = nn.relu(nn.Dense(4 * 4 * 16, name="fc")(z)).reshape(z.shape[0], 4, 4, 16)
    x = Block(16, name="block1")(x)
    mid = nn.Conv(16, (3, 3), name="mid")
    x = nn.relu(mid(nn.relu(mid(x))))
    x = Block(8, name="block2")(x)
    return jnp.tanh(nn.Conv(3, (1, 1), name="to_rgb")(x))


class NBlock(nnx.Module):
  def __init__(self, cin, cout, rngs):
    self.conv = nnx.Conv(cin, cout, (3, 3), rngs=rngs)

  def __call__(self, x):
    return jax.nn.relu(self.conv(_up(x)))


class NnxGen(nnx.Module):
  """The same network as LinenGen, in NNX (blocks in an nnx.List)."""

  def __init__(self, rngs):
    self.fc = nnx.Linear(ZDIM, 4 * 4 * 16, rngs=rngs)
    self.blocks = nnx.List([NBlock(16, 16, rngs), NBlock(16, 8, rngs)])
    self.mid = nnx.Conv(16, 16, (3, 3), rngs=rngs)
    self.to_rgb = nnx.Conv(8, 3, (1, 1), rngs=rngs)

  def __call__(self, z):
    x = jax.nn.relu(self.fc(z)).reshape(z.shape[0], 4, 4, 16)
    x = self.blocks[0](x)
    x = jax.nn.relu(self.mid(jax.nn.relu(self.mid(x))))
    x = self.blocks[1](x)
    return jnp.tanh(self.to_rgb(x))


# ---- Hand-threaded references: the forward passes written out, a hook between submodules. ----


def _edit_hook(edits):
  """hook(name, x): `x * (1 - alpha) + value * alpha` for the edited names, else x."""
  def hook(name, x):
    if name not in edits:
      return x
    alpha, value = edits[name]
    return x * (1 - alpha) + value * alpha
  return hook


def linen_by_hand(variables, z, hook):
  """LinenGen, submodule by submodule; also the user function of `from_function` (hook = tap)."""
  p = variables["params"]
  x = nn.relu(nn.Dense(4 * 4 * 16).apply({"params": p["fc"]}, z)).reshape(z.shape[0], 4, 4, 16)
  block1 = nn.Conv(16, (3, 3)).apply({"params": p["block1"]["conv"]}, _up(x))
  x = hook("block1", nn.relu(hook("block1.conv", block1)))
  mid = nn.Conv(16, (3, 3))
  x = nn.relu(hook("mid", mid.apply({"params": p["mid"]}, x)))
  x = nn.relu(hook("mid#2", mid.apply({"params": p["mid"]}, x)))
  block2 = nn.Conv(8, (3, 3)).apply({"params": p["block2"]["conv"]}, _up(x))
  x = hook("block2", nn.relu(hook("block2.conv", block2)))
  return jnp.tanh(hook("to_rgb", nn.Conv(3, (1, 1)).apply({"params": p["to_rgb"]}, x)))


def nnx_by_hand(model, z, hook):
  """NnxGen, calling its submodules one at a time."""
  x = jax.nn.relu(model.fc(z)).reshape(z.shape[0], 4, 4, 16)
  x = hook("blocks.0", jax.nn.relu(hook("blocks.0.conv", model.blocks[0].conv(_up(x)))))
  x = jax.nn.relu(hook("mid", model.mid(x)))
  x = jax.nn.relu(hook("mid#2", model.mid(x)))
  x = hook("blocks.1", jax.nn.relu(hook("blocks.1.conv", model.blocks[1].conv(_up(x)))))
  return jnp.tanh(hook("to_rgb", model.to_rgb(x)))


def colour_logits(params, images):
  """A trivial colour rule on each image's centred colours: red where red is furthest above its
  image mean, blue likewise, none where neither is above it by a small margin."""
  centred = images - jnp.mean(images, axis=(1, 2), keepdims=True)
  r, b = centred[..., 0], centred[..., 2]
  return params["gain"] * jnp.stack([jnp.full_like(r, 0.01), r, b], axis=-1)


def _config(layers, n, **kw):
  return dissect.Config(layers=tuple(layers), n=n, **kw)


# ---- Fixtures. ----

LINEN_LAYERS = ("block1", "block1.conv", "mid", "mid#2", "block2", "block2.conv", "to_rgb")
NNX_LAYERS = ("blocks.0", "blocks.0.conv", "mid", "mid#2", "blocks.1", "blocks.1.conv", "to_rgb")


@pytest.fixture(scope="module")
def linen_case():
  module = LinenGen()
  variables = module.init(jax.random.key(0), jnp.zeros((1, ZDIM)))
  gen = adapters.from_linen(module, variables, (ZDIM,))
  return gen, lambda z, hook: linen_by_hand(variables, z, hook), module, variables


@pytest.fixture(scope="module")
def nnx_case():
  model = NnxGen(nnx.Rngs(0))
  gen = adapters.from_nnx(model, (ZDIM,))
  return gen, lambda z, hook: nnx_by_hand(model, z, hook), model


@pytest.fixture(scope="module")
def seg():
  return adapters.segmenter_from_logits_fn(colour_logits, {"gain": jnp.float32(20.0)}, CONCEPTS)


@pytest.fixture(scope="module")
def z():
  return jax.random.normal(jax.random.key(1), (3, ZDIM))


@pytest.fixture(params=["linen_case", "nnx_case"])
def case(request):
  """(generator, by_hand(z, hook), ...) for the Linen and the NNX model in turn."""
  return request.getfixturevalue(request.param)


# ---- (a) captured activations. ----


def test_layers_are_the_4d_submodule_outputs_in_call_order(linen_case, nnx_case):
  assert linen_case[0].layers == LINEN_LAYERS and nnx_case[0].layers == NNX_LAYERS
  assert linen_case[0].latent_shape == (ZDIM,) and nnx_case[0].zdim == ZDIM


def test_linen_acts_equal_linens_capture_intermediates(linen_case, z):
  gen, _, module, variables = linen_case
  image, acts = jax.jit(gen.apply_fn, static_argnames="capture")(gen.params, z,
                                                                  capture=LINEN_LAYERS)
  ref_image, state = module.apply(variables, z, capture_intermediates=True,
                                  mutable=["intermediates"])
  np.testing.assert_allclose(image, ref_image, atol=1e-6)
  for name in LINEN_LAYERS:
    path, _, k = name.partition("#")
    node = state["intermediates"]
    for part in path.split("."):
      node = node[part]
    np.testing.assert_allclose(acts[name], node["__call__"][int(k or 1) - 1], atol=1e-6,
                               err_msg=name)


def test_acts_equal_the_submodules_called_by_hand(case, z):
  gen, by_hand = case[:2]
  seen = {}
  ref_image = by_hand(z, lambda name, x: seen.setdefault(name, x))
  image, acts = gen.apply_fn(gen.params, z, capture=gen.layers)
  assert set(acts) == set(gen.layers)
  np.testing.assert_allclose(image, ref_image, atol=1e-6)
  for name in gen.layers:
    np.testing.assert_allclose(acts[name], seen[name], atol=1e-6, err_msg=name)


def test_capture_is_before_the_edit_and_only_what_is_asked(case, z):
  gen = case[0]
  layer = gen.layers[0]
  _, plain = gen.apply_fn(gen.params, z, capture=layer)
  _, edited = gen.apply_fn(gen.params, z, {layer: Edit(1.0, 5.0)}, capture=layer)
  assert list(edited) == [layer]
  np.testing.assert_array_equal(plain[layer], edited[layer])


# ---- (b) ablations through the adapter equal the hand-threaded network. ----


@pytest.mark.parametrize("which", [0, 1, 3, 4])  # a block, a conv inside it, a repeated call, ...
def test_ablation_equals_hand_threaded(case, z, which):
  gen, by_hand = case[:2]
  layer = gen.layers[which]
  _, acts = gen.apply_fn(gen.params, z, capture=layer)
  units = acts[layer].shape[-1]
  alpha = jnp.zeros(units).at[jnp.array([0, 2, units - 1])].set(1.0)
  image, _ = jax.jit(gen.apply_fn)(gen.params, z, {layer: Edit(alpha, 0.0)})
  ref = by_hand(z, _edit_hook({layer: (alpha, 0.0)}))
  np.testing.assert_allclose(image, ref, atol=1e-6)
  assert not np.allclose(image, gen.apply_fn(gen.params, z)[0], atol=1e-4)


def test_user_nnx_module_is_not_mutated(nnx_case, z):
  gen, _, model = nnx_case
  gen.apply_fn(gen.params, z, {"mid": Edit(1.0, 0.0)}, capture=("blocks.0",))
  assert type(model.mid) is nnx.Conv and type(model.blocks[0]) is NBlock


# ---- (c) a vmapped all-unit sweep equals the loop of hand-threaded ablations. ----


def test_vmapped_single_unit_sweep_equals_loop_of_hand_ablations(case, seg):
  gen, by_hand = case[:2]
  layer = gen.layers[4]  # block2 / blocks.1: 8 units at 16x16
  units, n = 8, 6
  eye = jnp.eye(units)
  z = jnp.asarray(next(zsample.z_batches(n, 0, n, gen.zdim))[1])
  worlds = jax.jit(jax.vmap(lambda a: gen.apply_fn(gen.params, z, {layer: Edit(a, 0.0)})[0]))(eye)
  loop = jnp.stack([by_hand(z, _edit_hook({layer: (eye[u], 0.0)})) for u in range(units)])
  np.testing.assert_allclose(worlds, loop, atol=1e-6)

  def fractions(images):
    return causal.concept_fractions(seg.label_fn(seg.params, images), len(CONCEPTS)).mean(0)

  effect = causal.single_unit_effects(gen, seg, layer, units, n=n, batch_size=n, seed=0)
  base = fractions(by_hand(z, _edit_hook({})))
  edited = jnp.stack([fractions(images) for images in loop])
  assert np.all(base[1:] > 0.05), base  # the colour rule finds both colours
  np.testing.assert_allclose(effect.baseline, np.broadcast_to(base, effect.baseline.shape),
                             atol=1e-6)
  np.testing.assert_allclose(effect.edited, edited, atol=1e-6)


# ---- (d) end-to-end dissection. ----


@pytest.fixture(scope="module")
def linen_dissection(linen_case, seg):
  gen = linen_case[0]
  return dissect.dissect(gen, seg, _config(("block1", "block2"), 20, batch_size=10))


def test_adapted_models_dissect_end_to_end(linen_dissection, nnx_case, seg):
  nnx_gen = nnx_case[0]
  nnx_result = dissect.dissect(nnx_gen, seg,
                               _config(("blocks.1",), 20, batch_size=10))
  for result, layer, units in ((linen_dissection, "block1", 16), (linen_dissection, "block2", 8),
                               (nnx_result, "blocks.1", 8)):
    r = result[layer]
    assert r.iou.shape == (units, len(CONCEPTS)) and r.thresholds.shape == (units,)
    assert np.all(np.isfinite(r.iou)) and np.all(np.isfinite(r.thresholds))
    assert np.all((r.iou >= 0) & (r.iou <= 1))


def test_function_with_taps_dissects_like_linen(linen_case, linen_dissection, seg, z):
  variables = linen_case[3]
  gen = adapters.from_function(linen_by_hand, variables, (ZDIM,), LINEN_LAYERS)
  assert gen.layers == LINEN_LAYERS and gen.zdim == ZDIM
  image, acts = gen.apply_fn(gen.params, z, {"mid#2": Edit(1.0, 0.0)}, capture="block2")
  ref = linen_by_hand(variables, z, _edit_hook({"mid#2": (1.0, 0.0)}))
  np.testing.assert_allclose(image, ref, atol=1e-6)
  assert list(acts) == ["block2"]
  result = dissect.dissect(gen, seg, _config(("block1", "block2"), 20, batch_size=10))
  for layer in ("block1", "block2"):
    np.testing.assert_allclose(result[layer].iou, linen_dissection[layer].iou, atol=1e-6)
    np.testing.assert_allclose(result[layer].thresholds, linen_dissection[layer].thresholds,
                               atol=1e-6)


# ---- Options: output=, explicit layers, shared NNX modules, Linen segmenters. ----


class DictGen(nn.Module):
  @nn.compact
  def __call__(self, z):
    return {"image": LinenGen(name="net")(z), "score": jnp.sum(z, axis=-1)}


def test_output_picks_the_image_and_layers_can_be_chosen(z):
  module = DictGen()
  variables = module.init(jax.random.key(0), jnp.zeros((1, ZDIM)))
  with pytest.raises(ValueError, match="pass output="):
    adapters.from_linen(module, variables, ZDIM)
  gen = adapters.from_linen(module, variables, ZDIM, output="image", layers=("net.block2",))
  assert gen.layers == ("net.block2",)
  image, acts = gen.apply_fn(gen.params, z, capture="net.block2")
  assert image.shape == (3, 16, 16, 3) and acts["net.block2"].shape == (3, 16, 16, 8)


def test_shared_nnx_module_is_tapped_at_every_reference(z):
  class Shared(nnx.Module):
    def __init__(self, rngs):
      self.fc = nnx.Linear(ZDIM, 4 * 4 * 3, rngs=rngs)
      self.conv = nnx.Conv(3, 3, (3, 3), rngs=rngs)
      self.conv_again = self.conv

    def __call__(self, z):
      x = self.fc(z).reshape(z.shape[0], 4, 4, 3)
      return self.conv_again(jax.nn.relu(self.conv(x)))

  model = Shared(nnx.Rngs(0))
  gen = adapters.from_nnx(model, ZDIM)
  assert gen.layers == ("conv", "conv#2")  # one module object: named by its first path
  image, acts = gen.apply_fn(gen.params, z, {"conv#2": Edit(jnp.array([0.0, 1.0, 0.5]), 0.3)},
                             capture=("conv",))
  x = model.conv(model.fc(z).reshape(3, 4, 4, 3))
  np.testing.assert_allclose(acts["conv"], x, atol=1e-6)
  ref = model.conv(jax.nn.relu(x))
  ref = ref * (1 - jnp.array([0.0, 1.0, 0.5])) + 0.3 * jnp.array([0.0, 1.0, 0.5])
  np.testing.assert_allclose(image, ref, atol=1e-6)


def test_latents_reach_the_model_in_their_shape():
  def fn(params, z, tap):
    assert z.shape[1:] == (2, 4)
    return jnp.tanh(tap("grid", params * jnp.repeat(z[..., None], 3, axis=-1)))

  gen = adapters.from_function(fn, jnp.float32(2.0), (2, 4), ("grid",))
  assert gen.zdim == 8 and gen.latent_shape == (2, 4)
  z = jax.random.normal(jax.random.key(3), (3, 8))
  flat, acts = gen.apply_fn(gen.params, z, capture="grid")
  np.testing.assert_array_equal(flat, gen.apply_fn(gen.params, z.reshape(3, 2, 4))[0])
  np.testing.assert_allclose(acts["grid"][..., 0], 2.0 * z.reshape(3, 2, 4))


def test_calls_inside_the_models_own_transforms_are_not_layers(z):
  class Remat(nn.Module):
    @nn.compact
    def __call__(self, z):
      x = nn.Dense(4 * 4 * 3, name="fc")(z).reshape(z.shape[0], 4, 4, 3)
      x = Block(3, name="plain")(x)
      return jnp.tanh(nn.remat(Block)(3, name="rematted")(x))

  module = Remat()
  variables = module.init(jax.random.key(0), jnp.zeros((1, ZDIM)))
  gen = adapters.from_linen(module, variables, ZDIM)
  assert gen.layers == ("plain", "plain.conv")
  _, acts = jax.jit(gen.apply_fn, static_argnames="capture")(gen.params, z, capture="plain")
  assert acts["plain"].shape == (3, 8, 8, 3)


def test_segmenter_from_linen(z, linen_case):
  images = linen_case[0].apply_fn(linen_case[0].params, z)[0]
  module = nn.Conv(len(CONCEPTS), (1, 1))
  variables = module.init(jax.random.key(2), images)
  s = adapters.segmenter_from_linen(module, variables, CONCEPTS)
  probs, labels = s.segment_fn(s.params, images), s.label_fn(s.params, images)
  logits = module.apply(variables, images)
  assert probs.shape == (3, 16, 16, 3) and labels.shape == (3, 16, 16, 1)
  assert labels.dtype == jnp.int32 and s.concepts == CONCEPTS
  np.testing.assert_allclose(probs, jax.nn.softmax(logits), atol=1e-6)
  np.testing.assert_array_equal(labels[..., 0], jnp.argmax(logits, axis=-1))


# ---- (e) errors. ----


def test_errors_name_the_bad_value_and_the_valid_ones(case, z):
  gen = case[0]
  valid = "; valid layers are: " + ", ".join(map(repr, gen.layers))
  with pytest.raises(ValueError, match=r"z has shape \[3, 9\], expected \[\?, 8\]"):
    gen.apply_fn(gen.params, jnp.zeros((3, 9)))
  with pytest.raises(ValueError, match="unknown layer 'nope'" + valid.replace(".", r"\.")):
    gen.apply_fn(gen.params, z, capture=("nope",))
  with pytest.raises(ValueError, match="unknown layer 'fc'"):
    gen.apply_fn(gen.params, z, edits={"fc": Edit(1.0, 0.0)})
  with pytest.raises(ValueError, match=r"edit alpha of mid has shape \[5\]"):
    gen.apply_fn(gen.params, z, edits={"mid": Edit(jnp.ones(5), 0.0)})


def test_adapter_arguments_are_checked(linen_case, nnx_case, seg):
  _, _, module, variables = linen_case
  with pytest.raises(ValueError, match="unknown layer 'fc': no submodule call .* valid layers "
                     "are: 'block1', 'block1.conv'"):
    adapters.from_linen(module, variables, ZDIM, layers=("block1", "fc"))
  with pytest.raises(ValueError, match="unknown layer 'blocks.2'"):
    adapters.from_nnx(nnx_case[2], ZDIM, layers=("blocks.2",))
  with pytest.raises(ValueError, match="latent_shape"):
    adapters.from_linen(module, variables, (0,))
  with pytest.raises(ValueError,
                     match="unknown tap 'block1.conv'; valid taps are: 'block1', 'block2'"):
    adapters.from_function(linen_by_hand, variables, ZDIM, ("block1", "block2"))
  with pytest.raises(ValueError, match="unknown layer 'extra': no tap with a .* valid layers are: "
                     "'block1.conv', 'block1', 'mid'"):
    adapters.from_function(linen_by_hand, variables, ZDIM, LINEN_LAYERS + ("extra",))

  def twice(p, z, tap):  # taps 'mid' for both calls of the shared conv
    return linen_by_hand(p, z, lambda name, x: tap(name.split("#")[0], x))

  with pytest.raises(ValueError, match="tap 'mid' was called 2 times"):
    adapters.from_function(twice, variables, ZDIM, LINEN_LAYERS[:3] + LINEN_LAYERS[4:])
  bad = adapters.segmenter_from_logits_fn(colour_logits, seg.params, CONCEPTS[:2])
  with pytest.raises(ValueError, match=r"segmenter logits has shape \[1, 4, 4, 3\], expected "
                     r"\[1, 4, 4, 2\]"):
    bad.label_fn(bad.params, jnp.zeros((1, 4, 4, 3)))
  with pytest.raises(ValueError, match="concepts"):
    adapters.segmenter_from_logits_fn(colour_logits, seg.params, ["red"])
