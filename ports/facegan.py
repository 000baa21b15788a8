"""A trained 64x64 face DCGAN (the `gan-face-generate` package) as a Flax port with a converter.

The scene world and the planted world are ours; this is the first real, independently trained
GAN that jaxdissect can dissect on a laptop. The PyPI package `gan-face-generate` ships a PyTorch
tutorial-style DCGAN generator trained on synthetic faces (DigiFace-1M) and its weights in
`weights.tar`; this module reproduces that network exactly and exposes it through the model
protocol, so its units can be dissected (e.g. with `jaxdissect.colorseg`) and edited as data.

The network (`nz = 100`, `ngf = 64`, NHWC here), one layer per transposed convolution:
  * `layer1`: ConvT 100 -> 512, 4x4, stride 1, no padding, on the 1x1 latent; BN; ReLU -> 4x4
  * `layer2`: ConvT 512 -> 256, 4x4, stride 2, padding 1; BN; ReLU -> 8x8
  * `layer3`: ConvT 256 -> 128, same; BN; ReLU -> 16x16
  * `layer4`: ConvT 128 -> 64, same; BN; ReLU -> 32x32
  * `layer5`: ConvT 64 -> 3, same; tanh -> the image `[B, 64, 64, 3]` in [-1, 1]
No convolution has a bias. BatchNorm runs in eval mode on the checkpoint's running statistics
(eps 1e-5). Activations are captured after each layer's nonlinearity and before its edit. The
latent is the original's `[B, 100, 1, 1]` standard normal, taken here as `[B, 100]` (draw it with
`jaxdissect.zsample.standard_z(n, seed, dim=ZDIM)`).

The checkpoint is a dict whose `netG_state_dict` entry holds the generator's state dict, keyed
`main.{i}.*` by position in the torch `nn.Sequential`. Params here are a nested dict keyed by
layer name:
  * `kernel`: `[4, 4, in, out]`, with `kernel[y, x, i, o]` = torch `weight[i, o, y, x]`;
  * `scale`, `bias`, `mean`, `var`: `[out]`, the BatchNorm weight, bias and running stats
    (layers 1-4 only; the running stats sit in params too, so a model is one pytree).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.errors import check_shape
from jaxdissect.model import Edit, Generator, apply_edit, check_call

ZDIM = 100
NGF = 64
LAYERS = ("layer1", "layer2", "layer3", "layer4", "layer5")
CHANNELS = (ZDIM, NGF * 8, NGF * 4, NGF * 2, NGF, 3)  # input of layer1, then each layer's output
CHECKPOINT_KEY = "netG_state_dict"
PACKAGE = "gan_face_generate"

_KERNEL = 4
_BN_EPS = 1e-5
_BN_FIELDS = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _torch_index(layer: int) -> tuple[int, int | None]:
  """Positions of layer `layer` (1-based) in the torch `main` Sequential: (conv, batchnorm)."""
  conv = 3 * (layer - 1)
  return conv, (conv + 1 if layer < len(LAYERS) else None)


def _conv_transpose(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  """PyTorch `ConvTranspose2d` (no bias) on NHWC: a stride-dilated input, padded by
  `k - 1 - padding`, cross-correlated with the spatially flipped kernel."""
  pad = _KERNEL - 1 - padding
  return jax.lax.conv_general_dilated(
      x, kernel[::-1, ::-1], window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
      lhs_dilation=(stride, stride), dimension_numbers=("NHWC", "HWIO", "NHWC"))


class _Block(nn.Module):
  """ConvT (4x4) -> eval-mode BatchNorm -> ReLU, or ConvT -> tanh for the output layer."""

  features: int
  stride: int
  padding: int
  output: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.normal(0.02),
                        (_KERNEL, _KERNEL, x.shape[-1], self.features))
    y = _conv_transpose(x, kernel, self.stride, self.padding)
    if self.output:
      return jnp.tanh(y)
    scale = self.param("scale", nn.initializers.ones, (self.features,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    y = (y - mean) * (scale * jax.lax.rsqrt(var + _BN_EPS)) + bias
    return nn.relu(y)


class FaceDCGAN(nn.Module):
  """The generator: `z [B, 100] -> (image [B, 64, 64, 3], acts)`; edits and capture by name."""

  @nn.compact
  def __call__(self, z: jax.Array, edits: Mapping[str, Edit] | None = None,
               capture: tuple[str, ...] = ()) -> tuple[jax.Array, dict[str, jax.Array]]:
    edits = edits or {}
    acts = {}
    x = z[:, None, None, :]
    for i, name in enumerate(LAYERS):
      first, last = i == 0, i == len(LAYERS) - 1
      block = _Block(CHANNELS[i + 1], stride=1 if first else 2, padding=0 if first else 1,
                     output=last, name=name)
      x = block(x)
      if name in capture:
        acts[name] = x
      x = apply_edit(x, edits.get(name), name)
    return x, acts


_MODULE = FaceDCGAN()


def apply_fn(params: Any, z: jax.Array, edits: Mapping[str, Edit] | None = None,
             capture: Sequence[str] | str | None = None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The protocol `apply_fn`: `z [B, 100] -> (image [B, 64, 64, 3] in [-1, 1], acts)`."""
  z, edits, names = check_call(z, ZDIM, edits, capture, LAYERS)
  return _MODULE.apply({"params": params}, z, edits, names)


# --- Checkpoint conversion (torch state dict of the package's Generator, as numpy arrays) -----

def torch_shapes() -> dict[str, tuple[int, ...]]:
  """Every state-dict key the generator has (but `num_batches_tracked`) and its shape."""
  shapes = {}
  for layer in range(1, len(LAYERS) + 1):
    conv, bn = _torch_index(layer)
    c_in, c_out = CHANNELS[layer - 1], CHANNELS[layer]
    shapes[f"main.{conv}.weight"] = (c_in, c_out, _KERNEL, _KERNEL)
    if bn is not None:
      for field in _BN_FIELDS:
        shapes[f"main.{bn}.{field}"] = (c_out,)
  return shapes


def _unwrap(sd: Mapping[str, Any]) -> dict[str, Any]:
  """The generator's state dict from a whole checkpoint or a (DataParallel) state dict."""
  if CHECKPOINT_KEY in sd and isinstance(sd[CHECKPOINT_KEY], Mapping):
    sd = sd[CHECKPOINT_KEY]
  return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def convert_state_dict(sd: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
  """Converts the package's generator state dict (numpy arrays) to this port's params.

  Accepts the whole checkpoint (`{'netG_state_dict': ...}`) too. `num_batches_tracked` entries
  are optional and ignored. Raises ValueError naming any missing, unexpected or mis-shaped key.
  """
  sd = _unwrap(sd)
  shapes = torch_shapes()
  found = {k for k in sd if not k.endswith(".num_batches_tracked")}
  _check_keys(found, set(shapes))
  arrays = {}
  for key, shape in shapes.items():
    value = np.asarray(sd[key])
    check_shape(key, value.shape, shape)
    arrays[key] = value.astype(np.float32)
  params = {}
  for layer, name in enumerate(LAYERS, start=1):
    conv, bn = _torch_index(layer)
    kernel = arrays[f"main.{conv}.weight"].transpose(2, 3, 0, 1)
    params[name] = {"kernel": np.ascontiguousarray(kernel)}
    if bn is not None:
      for field, ours in _BN_FIELDS.items():
        params[name][ours] = arrays[f"main.{bn}.{field}"]
  return params


def _check_keys(found: set[str], expected: set[str]) -> None:
  """Raises ValueError naming the missing and unexpected state-dict keys, if any."""
  missing, extra = sorted(expected - found), sorted(found - expected)
  if missing:
    raise ValueError(f"missing key(s) {', '.join(map(repr, missing))} in the face DCGAN state "
                     "dict")
  if extra:
    raise ValueError(f"unexpected key(s) {', '.join(map(repr, extra))} in the face DCGAN state "
                     f"dict; expected keys: {', '.join(sorted(expected))}")


def default_weights_path() -> str:
  """The `weights.tar` of the installed `gan-face-generate` package (found without importing
  it, since its modules need torch). Raises ValueError if the package is not installed."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ValueError("the face DCGAN weights come with the PyPI package gan-face-generate, which "
                     "is not installed: run `pip install --no-deps gan-face-generate` or pass the "
                     "path of its weights.tar")
  return os.path.join(list(spec.submodule_search_locations)[0], "weights.tar")


def from_state_dict(sd: Mapping[str, Any]) -> Generator:
  """A generator with the weights of a state dict (or whole checkpoint) of numpy arrays."""
  params = jax.tree_util.tree_map(jnp.asarray, convert_state_dict(sd))
  return Generator(apply_fn, params, LAYERS, (ZDIM,))


def load(path: str | None = None) -> Generator:
  """The trained face generator read from `path` (default: the installed package's weights).

  The file is read with `ports.pth`, which needs no torch and runs no pickled code.
  """
  path = default_weights_path() if path is None else path
  from ports import pth  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise FileNotFoundError(f"face DCGAN checkpoint {path!r} does not exist or is not a file")
  checkpoint = pth.load(path)
  if not isinstance(checkpoint, Mapping):
    raise ValueError(f"{path} holds a {type(checkpoint).__name__}, expected a dict with the "
                     f"generator's state dict under {CHECKPOINT_KEY!r}")
  return from_state_dict(checkpoint)
