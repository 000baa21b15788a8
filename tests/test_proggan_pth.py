"""ProgGAN from a real `.pth` file: `ports.proggan.load` against a PyTorch ProgGAN built here.

The reference network is written from the spec (section 1), not from this port: PixelNorm
(eps 1e-8) before every block, conv without bias, WScale `x * gain / sqrt(in) + b` with gain
sqrt(2)/k (1 for the output), layer1 a k4 pad-3 conv of the 1x1 z map, nearest x2 upsampling
before odd layers >= 3, LeakyReLU(0.2). Its `state_dict()` has the netdissect key names, so the
file goes through `torch.save` and back exactly as published weights would, in the LSUN 256
configuration with random weights and biases.
"""

import collections
import math

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch not installed (parity extra)")
nn, F = torch.nn, torch.nn.functional

from ports import proggan  # noqa: E402

LSUN_SIZES = [512, 512, 512, 512, 256, 128, 64, 32]
BATCH = 2


class WScale(nn.Module):
  """Holds the per-channel bias `b` (netdissect's `wscale.b`)."""

  def __init__(self, channels):
    super().__init__()
    self.b = nn.Parameter(0.1 * torch.randn(channels))


class Block(nn.Module):
  """PixelNorm -> (x2 nearest) -> conv (no bias) -> `* gain / sqrt(in) + b` -> (LeakyReLU)."""

  def __init__(self, c_in, c_out, k, pad, gain, upsample, leaky):
    super().__init__()
    self.conv = nn.Conv2d(c_in, c_out, k, padding=pad, bias=False)
    nn.init.normal_(self.conv.weight)
    self.wscale = WScale(c_out)
    self.scale, self.upsample, self.leaky = gain / math.sqrt(c_in), upsample, leaky

  def forward(self, x):
    x = x / torch.sqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)
    if self.upsample:
      x = F.interpolate(x, scale_factor=2, mode="nearest")
    x = self.conv(x) * self.scale + self.wscale.b.view(1, -1, 1, 1)
    return F.leaky_relu(x, 0.2) if self.leaky else x


class TorchProgGAN(nn.Sequential):
  """`layer1 .. layer{2L}, output_{R}x{R}`; forward returns `(image, {layer: activation})`."""

  def __init__(self, sizes):
    blocks = collections.OrderedDict(layer1=Block(sizes[0], sizes[1], 4, 3, math.sqrt(2) / 4,
                                                  False, True))
    for i in range(2, 2 * (len(sizes) - 1) + 1):
      c_in, c_out = (sizes[i // 2], sizes[i // 2 + 1]) if i % 2 else (sizes[i // 2],) * 2
      blocks[f"layer{i}"] = Block(c_in, c_out, 3, 1, math.sqrt(2) / 3, i % 2 == 1, True)
    r = 4 * 2 ** (len(sizes) - 2)
    blocks[f"output_{r}x{r}"] = Block(sizes[-1], 3, 1, 0, 1.0, False, False)
    super().__init__(blocks)

  def forward(self, z):
    x, acts = z.view(z.shape[0], -1, 1, 1), {}
    for name, block in self.named_children():
      x = acts[name] = block(x)
    return x, acts


def _legacy_names(sd, r):
  """`layer{i}` -> `features.{i-1}`, `output_{r}x{r}` -> `output` (old netdissect files)."""
  out = collections.OrderedDict()
  for key, value in sd.items():
    layer, rest = key.split(".", 1)
    name = "output" if layer == f"output_{r}x{r}" else f"features.{int(layer[5:]) - 1}"
    out[f"{name}.{rest}"] = value
  return out


@pytest.fixture(scope="module")
def reference():
  """The torch model, a batch of z and its image and activations (NCHW numpy)."""
  torch.manual_seed(0)
  model = TorchProgGAN(LSUN_SIZES).eval()
  z = torch.randn(BATCH, LSUN_SIZES[0])
  with torch.no_grad():
    image, acts = model(z)
  return model, z.numpy(), image.numpy(), {k: v.numpy() for k, v in acts.items()}


@pytest.fixture(scope="module")
def files(reference, tmp_path_factory):
  """The model saved three ways: zip, legacy format, and wrapped with legacy key names."""
  model, tmp = reference[0], tmp_path_factory.mktemp("proggan")
  sd = model.state_dict()
  paths = {"zip": tmp / "zip.pth", "legacy": tmp / "legacy.pth", "wrapped": tmp / "wrapped.pth"}
  torch.save(sd, paths["zip"])
  torch.save(sd, paths["legacy"], _use_new_zipfile_serialization=False)
  torch.save({"state_dict": _legacy_names(sd, 256), "iteration": 10}, paths["wrapped"])
  return paths


def test_state_dict_has_the_netdissect_names(reference):
  keys = list(reference[0].state_dict())
  assert keys[:4] == ["layer1.conv.weight", "layer1.wscale.b", "layer2.conv.weight",
                      "layer2.wscale.b"]
  assert keys[-2:] == ["output_256x256.conv.weight", "output_256x256.wscale.b"]
  assert len(keys) == 2 * 15


@pytest.mark.parametrize("variant", ["zip", "legacy", "wrapped"])
def test_every_layer_matches_torch(reference, files, variant):
  _, z, ref_image, ref_acts = reference
  gen = proggan.load(str(files[variant]))
  assert gen.layers == tuple(ref_acts)
  image, acts = jax.jit(gen.apply_fn, static_argnames="capture")(gen.params, z, capture=gen.layers)
  errors = {name: float(np.max(np.abs(np.asarray(acts[name]).transpose(0, 3, 1, 2) - ref)))
            for name, ref in ref_acts.items()}
  assert max(errors.values()) <= 1e-4, errors
  image = np.asarray(image).transpose(0, 3, 1, 2)
  assert image.shape == (BATCH, 3, 256, 256)
  assert np.max(np.abs(image - ref_image)) <= 1e-4
  assert float(np.std(ref_image)) > 0.1  # the comparison is not vacuous


def test_hardtanh_clips_the_image(tmp_path):
  torch.manual_seed(1)
  model = TorchProgGAN([16, 12, 8]).eval()
  for p in model.parameters():
    p.data *= 3  # push the output well past [-1, 1]
  z = torch.randn(BATCH, 16)
  with torch.no_grad():
    ref = model(z)[0].numpy().transpose(0, 2, 3, 1)
  path = tmp_path / "tiny.pth"
  torch.save(model.state_dict(), path)
  gen = proggan.load(str(path), hardtanh=True)
  image, _ = gen.apply_fn(gen.params, z.numpy())
  assert np.abs(ref).max() > 1.5
  np.testing.assert_allclose(np.asarray(image), np.clip(ref, -1, 1), atol=1e-5)
