"""Face DCGAN port: the shipped weights in the package's own PyTorch generator against our Flax
port (image and every layer), edits against the same edit made in torch, the converter's errors,
loading by name, and a small dissection with the colour segmenter."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import colorseg, dissect, zoo, zsample
from jaxdissect import Edit, ablate
from ports import facegan

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch")
models = pytest.importorskip(
    "gan_face_generate.models",
    reason="the reference generator and its weights come with `pip install --no-deps "
    "gan-face-generate`")

# Index in the torch `main` Sequential of each layer's nonlinearity (where acts are captured).
_TORCH_OUTPUT = {"layer1": 2, "layer2": 5, "layer3": 8, "layer4": 11, "layer5": 13}


@pytest.fixture(scope="module")
def torch_state_dict():
  checkpoint = torch.load(facegan.default_weights_path(), map_location="cpu", weights_only=True)
  return checkpoint[facegan.CHECKPOINT_KEY]


@pytest.fixture(scope="module")
def numpy_state_dict(torch_state_dict):
  return {k: v.numpy() for k, v in torch_state_dict.items()}


@pytest.fixture(scope="module")
def reference(torch_state_dict):
  """The package's own generator class (nz 100, ngf 64, 3 channels) with the shipped weights."""
  net = models.Generator(0, 3, facegan.ZDIM, facegan.NGF)
  net.load_state_dict(torch_state_dict)
  return net.eval()


@pytest.fixture(scope="module")
def gen(numpy_state_dict):
  return facegan.from_state_dict(numpy_state_dict)


@pytest.fixture(scope="module")
def z():
  return zsample.standard_z(4, seed=3, dim=facegan.ZDIM)


def _torch_run(net, z, zero_units=None):
  """Image and every layer's output, NHWC; `zero_units = (layer, units)` ablates in torch."""
  outs, hooks = {}, []
  for name, index in _TORCH_OUTPUT.items():
    def hook(module, inputs, output, name=name):
      if zero_units is not None and zero_units[0] == name:
        output = output.clone()
        output[:, list(zero_units[1])] = 0.0
      outs[name] = output.permute(0, 2, 3, 1).numpy().copy()
      return output
    hooks.append(net.main[index].register_forward_hook(hook))
  try:
    with torch.no_grad():
      image = net(torch.from_numpy(z)[:, :, None, None])
  finally:
    for h in hooks:
      h.remove()
  return image.permute(0, 2, 3, 1).numpy(), outs


def test_image_and_layers_match_torch(gen, reference, z):
  ref_image, ref_acts = _torch_run(reference, z)
  image, acts = jax.jit(lambda p, z: gen.apply_fn(p, z, capture=facegan.LAYERS))(gen.params, z)
  assert image.shape == (4, 64, 64, 3) and image.dtype == jnp.float32
  assert np.abs(np.asarray(image) - ref_image).max() <= 1e-4
  for name in facegan.LAYERS:
    scale = max(1.0, float(np.abs(ref_acts[name]).max()))
    assert acts[name].shape == ref_acts[name].shape, name
    assert np.abs(np.asarray(acts[name]) - ref_acts[name]).max() <= 1e-4 * scale, name


def test_layer_table(gen, z):
  _, acts = gen.apply_fn(gen.params, z[:1], capture=gen.layers)
  assert gen.layers == facegan.LAYERS
  assert {n: a.shape[1:] for n, a in acts.items()} == {
      "layer1": (4, 4, 512), "layer2": (8, 8, 256), "layer3": (16, 16, 128),
      "layer4": (32, 32, 64), "layer5": (64, 64, 3)}


def test_ablation_matches_torch_and_no_edit_is_identical(gen, reference, z):
  units = (3, 17, 40, 99)
  plain, _ = gen.apply_fn(gen.params, z)
  unedited, _ = gen.apply_fn(gen.params, z, edits=None)
  empty, _ = gen.apply_fn(gen.params, z, edits={})
  np.testing.assert_array_equal(unedited, plain)
  np.testing.assert_array_equal(empty, plain)
  edited, acts = gen.apply_fn(gen.params, z, edits={"layer3": ablate(units, 128)},
                              capture="layer3")
  ref_edited, ref_acts = _torch_run(reference, z, zero_units=("layer3", units))
  assert np.abs(np.asarray(edited) - np.asarray(plain)).max() > 1e-3
  assert np.abs(np.asarray(edited) - ref_edited).max() <= 1e-4
  # Capture is before the edit: the ablated units still show their activations.
  assert float(jnp.abs(acts["layer3"][..., list(units)]).max()) > 0


def test_soft_edit_is_differentiable(gen, z):
  def redness(alpha):
    image, _ = gen.apply_fn(gen.params, z[:2], edits={"layer4": Edit(alpha, jnp.zeros(64))})
    return jnp.mean(image[..., 0])
  grad = jax.grad(redness)(jnp.full((64,), 0.5))
  assert grad.shape == (64,) and np.isfinite(np.asarray(grad)).all()
  assert np.abs(np.asarray(grad)).max() > 0


def test_converter_accepts_the_whole_checkpoint(numpy_state_dict):
  wrapped = facegan.convert_state_dict({facegan.CHECKPOINT_KEY: numpy_state_dict})
  bare = facegan.convert_state_dict(
      {k: v for k, v in numpy_state_dict.items() if not k.endswith("num_batches_tracked")})
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, wrapped, bare))
  w = numpy_state_dict["main.3.weight"]  # torch (in, out, k, k) -> ours (k, k, in, out)
  np.testing.assert_array_equal(wrapped["layer2"]["kernel"], w.transpose(2, 3, 0, 1))
  np.testing.assert_array_equal(wrapped["layer4"]["var"], numpy_state_dict["main.10.running_var"])
  assert set(wrapped["layer5"]) == {"kernel"}


def test_converter_names_bad_keys(numpy_state_dict):
  missing = {k: v for k, v in numpy_state_dict.items() if k != "main.7.running_mean"}
  with pytest.raises(ValueError, match="missing key.*'main.7.running_mean'"):
    facegan.convert_state_dict(missing)
  extra = dict(numpy_state_dict, **{"main.12.bias": np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match="unexpected key.*'main.12.bias'"):
    facegan.convert_state_dict(extra)
  wrong = dict(numpy_state_dict, **{"main.6.weight": np.zeros((128, 256, 4, 4), np.float32)})
  with pytest.raises(ValueError, match=r"main.6.weight has shape \[128, 256, 4, 4\], expected "
                     r"\[256, 128, 4, 4\]"):
    facegan.convert_state_dict(wrong)


def test_latent_shape_is_checked(gen):
  with pytest.raises(ValueError, match=r"z has shape \[2, 512\], expected \[\?, 100\]"):
    gen.apply_fn(gen.params, jnp.zeros((2, 512)))
  with pytest.raises(ValueError, match="unknown layer 'layer6'"):
    gen.apply_fn(gen.params, jnp.zeros((1, 100)), capture="layer6")


def test_load_reads_the_shipped_weights_without_torch(numpy_state_dict):
  pytest.importorskip("ports.pth", reason="ports/pth.py (the torch-free reader) is not there yet")
  loaded = facegan.load()
  expected = facegan.convert_state_dict(numpy_state_dict)
  assert loaded.layers == facegan.LAYERS
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: np.array_equal(np.asarray(a), b), loaded.params, expected))
  assert zoo.load_generator("facegan").layers == facegan.LAYERS


def test_missing_package_or_file_is_explained(monkeypatch, tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing.tar"):
    facegan.load(str(tmp_path / "nothing.tar"))
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ValueError, match="pip install --no-deps gan-face-generate"):
    facegan.load()


def test_zoo_knows_the_face_gan():
  assert zoo.load_generator("facegan").latent_shape == (facegan.ZDIM,) == (100,)
  assert zoo.default_segmenter("facegan") == "color"
  assert zoo.default_segmenter("planted") == "planted"


def test_dissects_with_the_colour_segmenter(gen):
  seg = colorseg.make_segmenter()
  config = dissect.Config(layers=("layer3",), n=40, batch_size=20, warmup=20,
                          topk=5)
  result = dissect.dissect(gen, seg, config)["layer3"]
  assert result.shape == (16, 16, 128)
  assert result.thresholds.shape == (128,) and np.isfinite(result.thresholds).all()
  assert result.iou.shape == (128, len(seg.concepts))
  assert np.all((result.iou >= 0) & (result.iou <= 1))
  assert np.all(result.iou[:, 0] == 0)  # no pixel is labelled '-'
  assert np.all((result.label >= 1) & (result.label < len(seg.concepts)))
  np.testing.assert_allclose(result.best_iou, result.iou.max(axis=1))
  assert result.top_indices.shape == (128, 5) and result.top_indices.max() < 40
  # Faces are mostly skin, hair and background: some unit must follow one of those colours.
  assert result.best_iou.max() > 0.04
