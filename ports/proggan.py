"""Progressive GAN generator (Karras et al.) as a Flax Linen module, with its checkpoint converter.

GAN Dissection studies the LSUN scene generators of Progressive GAN, so this port reproduces the
netdissect `proggan.py` network exactly (layer names, weight scaling, PixelNorm placement) and
exposes it through the jaxdissect model protocol: `apply_fn(params, z, edits, capture)`. Layer
outputs can be captured (after LeakyReLU, before any edit) and edited as data, so ablation,
insertion, `vmap` over edits and `grad` with respect to a soft alpha need no hooks.

Params are a plain nested dict keyed by layer name; each layer holds
  * `kernel`: `[k, k, in, out]` (HWIO), the torch weight `(out, in, k, k)` transposed, unscaled;
  * `bias`: `[out]`, the torch `wscale.b`.
The constant weight scale `gain / sqrt(in)` is applied in the forward pass, as in the original.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.errors import check_shape
from jaxdissect.model import ApplyFn, Edit, Generator, apply_edit, check_call
from ports import pth

LSUN_SIZES = (512, 512, 512, 512, 256, 128, 64, 32)
CELEBAHQ_SIZES = (512, 512, 512, 512, 512, 256, 128, 64, 32, 16)

_PIXELNORM_EPS = 1e-8
_LEAK = 0.2


def resolution(sizes: Sequence[int]) -> int:
  """Output resolution R of a generator with channel list `sizes = [zdim, c_4, ..., c_R]`."""
  return 4 * 2 ** (len(sizes) - 2)


def layer_names(sizes: Sequence[int]) -> tuple[str, ...]:
  """The published layer order: `layer1` .. `layer{2L}` then `output_{R}x{R}`."""
  if len(sizes) < 2:
    raise ValueError(f"sizes {list(sizes)} is too short, expected [zdim, c_4, ...]")
  r = resolution(sizes)
  return tuple(f"layer{i}" for i in range(1, 2 * (len(sizes) - 1) + 1)) + (f"output_{r}x{r}",)


def torch_weight_shapes(sizes: Sequence[int]) -> dict[str, tuple[int, ...]]:
  """The torch conv weight shape `(out, in, k, k)` of each layer, in layer order."""
  names = layer_names(sizes)
  shapes = {names[0]: (sizes[1], sizes[0], 4, 4)}
  for i, name in enumerate(names[1:-1], start=2):
    c_in = sizes[i // 2]
    c_out = sizes[i // 2 + 1] if i % 2 else c_in
    shapes[name] = (c_out, c_in, 3, 3)
  shapes[names[-1]] = (3, sizes[-1], 1, 1)
  return shapes


def pixel_norm(x: jax.Array) -> jax.Array:
  """Normalises each pixel's feature vector to unit root-mean-square over channels."""
  return x / jnp.sqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + _PIXELNORM_EPS)


def _upsample2(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 upsampling of `[B, H, W, C]`."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class _WScaleConv(nn.Module):
  """PixelNorm -> (optional x2 upsample) -> conv without bias -> `* scale + bias`.

  `scale = gain / sqrt(in_channels)`; `first` computes the 4x4, padding-3 conv of the 1x1
  latent as the equivalent dense product `out[y, x] = sum_i kernel[3 - y, 3 - x, i] z_i`.
  """

  features: int
  kernel_size: int
  gain: float
  upsample: bool = False
  first: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, c_in = self.kernel_size, x.shape[-1]
    kernel = self.param("kernel", nn.initializers.normal(1.0), (k, k, c_in, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    x = pixel_norm(x)
    if self.first:
      y = jnp.einsum("bi,yxio->byxo", x, kernel[::-1, ::-1])
    else:
      if self.upsample:
        x = _upsample2(x)
      y = jax.lax.conv_general_dilated(
          x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y * (self.gain / math.sqrt(c_in)) + bias


class ProgGAN(nn.Module):
  """The ProgGAN generator: `z [B, zdim] -> (image [B, R, R, 3], acts)`.

  `edits` maps layer names to `Edit`s applied to the layer output; `capture` is a tuple of
  layer names whose pre-edit outputs are returned in `acts`.
  """

  sizes: tuple[int, ...]
  hardtanh: bool = False

  @nn.compact
  def __call__(self, z: jax.Array, edits: Mapping[str, Edit] | None = None,
               capture: tuple[str, ...] = ()) -> tuple[jax.Array, dict[str, jax.Array]]:
    edits = edits or {}
    acts = {}
    x = z
    blocks = self._blocks()
    for i, (name, block) in enumerate(zip(layer_names(self.sizes), blocks)):
      x = self._activation(block(x), is_output=i == len(blocks) - 1)
      if name in capture:
        acts[name] = x
      x = apply_edit(x, edits.get(name), name)
    return x, acts

  def _activation(self, x: jax.Array, is_output: bool) -> jax.Array:
    """LeakyReLU(0.2) after conv blocks; identity (or hardtanh if asked) after the output."""
    if not is_output:
      return nn.leaky_relu(x, _LEAK)
    return jnp.clip(x, -1.0, 1.0) if self.hardtanh else x

  def _blocks(self) -> list[_WScaleConv]:
    """The layer modules in order, named after the published layers."""
    shapes = torch_weight_shapes(self.sizes)
    blocks = []
    for i, (name, (c_out, _, k, _)) in enumerate(shapes.items(), start=1):
      is_output = i == len(shapes)
      gain = 1.0 if is_output else math.sqrt(2) / k
      upsample = i >= 3 and i % 2 == 1 and not is_output
      blocks.append(_WScaleConv(c_out, k, gain, upsample=upsample, first=i == 1, name=name))
    return blocks


def make_apply_fn(sizes: Sequence[int], *, hardtanh: bool = False) -> ApplyFn:
  """Returns the protocol `apply_fn(params, z, edits=None, capture=None)` for `sizes`."""
  module = ProgGAN(tuple(sizes), hardtanh)
  layers = layer_names(sizes)

  def apply_fn(params: Any, z: jax.Array, edits: Mapping[str, Edit] | None = None,
               capture: Sequence[str] | str | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs the generator on `z [B, zdim]`; returns `(image [B, R, R, 3], acts)`."""
    z, edits, names = check_call(z, sizes[0], edits, capture, layers)
    return module.apply({"params": params}, z, edits, names)

  return apply_fn


def make_generator(sizes: Sequence[int], key: jax.Array, *, hardtanh: bool = False) -> Generator:
  """A randomly initialised generator: N(0, 1) kernels (wscale does the scaling), zero biases."""
  params = _init_params(tuple(sizes), key)
  return Generator(make_apply_fn(sizes, hardtanh=hardtanh), params, layer_names(sizes),
                   (sizes[0],))


@functools.partial(jax.jit, static_argnums=0)
def _init_params(sizes: tuple[int, ...], key: jax.Array) -> dict[str, dict[str, jax.Array]]:
  """All kernels from one N(0, 1) draw (one compiled sampler), all biases zero."""
  shapes = {n: (s[2], s[3], s[1], s[0]) for n, s in torch_weight_shapes(sizes).items()}
  flat = jax.random.normal(key, (sum(math.prod(s) for s in shapes.values()),), jnp.float32)
  params, start = {}, 0
  for name, shape in shapes.items():
    size = math.prod(shape)
    kernel = flat[start:start + size].reshape(shape)
    params[name] = {"kernel": kernel, "bias": jnp.zeros(shape[-1:], jnp.float32)}
    start += size
  return params


def from_state_dict(sd: Mapping[str, Any], *, hardtanh: bool = False) -> Generator:
  """A generator with the weights of a netdissect-format state dict of numpy arrays."""
  sizes = sizes_from_state_dict(sd)
  return Generator(make_apply_fn(sizes, hardtanh=hardtanh), convert_state_dict(sd),
                   layer_names(sizes), (sizes[0],))


# --- Checkpoint conversion (netdissect torch state_dict, as numpy arrays) ---------------------

_LEGACY_FEATURE = re.compile(r"^features\.(\d+)\.(.*)$")


def _canonical(sd: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Unwraps `{'state_dict': ...}` and renames legacy `features.i` / `output` keys."""
  if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
    sd = sd["state_dict"]
  out = {}
  for key, value in sd.items():
    m = _LEGACY_FEATURE.match(key)
    out[f"layer{int(m.group(1)) + 1}.{m.group(2)}" if m else key] = np.asarray(value)
  legacy_output = [k for k in out if k.startswith("output.")]
  if legacy_output:
    r = 4 * 2 ** (_count_layers(out) // 2 - 1)
    for key in legacy_output:
      out[f"output_{r}x{r}." + key[len("output."):]] = out.pop(key)
  return out


def _count_layers(sd: Mapping[str, Any]) -> int:
  """Number of consecutive `layer{i}.conv.weight` keys from `layer1`."""
  n = 0
  while f"layer{n + 1}.conv.weight" in sd:
    n += 1
  return n


def sizes_from_state_dict(sd: Mapping[str, Any]) -> list[int]:
  """Channel list `[zdim, c_4, c_8, ...]` read from the conv weight shapes."""
  sd = _canonical(sd)
  n = _count_layers(sd)
  if n == 0 or n % 2:
    raise ValueError(f"expected an even, nonzero number of 'layer{{i}}.conv.weight' keys, found "
                     f"{n}; keys are: {', '.join(sorted(sd))}")
  return [int(sd["layer1.conv.weight"].shape[1])] + [
      int(sd[f"layer{i}.conv.weight"].shape[0]) for i in range(1, n + 1, 2)]


def convert_state_dict(sd: Mapping[str, Any]) -> dict[str, dict[str, np.ndarray]]:
  """Converts a netdissect ProgGAN state dict (numpy arrays) to this port's params.

  Accepts the `{'state_dict': ...}` wrapper and legacy `features.{i}` / `output` names. Raises
  ValueError naming any missing, unexpected or mis-shaped key.
  """
  sd = _canonical(sd)
  shapes = torch_weight_shapes(sizes_from_state_dict(sd))
  expected = {f"{n}.{p}" for n in shapes for p in ("conv.weight", "wscale.b")}
  _check_keys(set(sd), expected)
  params = {}
  for name, shape in shapes.items():
    w, b = sd[f"{name}.conv.weight"], sd[f"{name}.wscale.b"]
    check_shape(f"{name}.conv.weight", w.shape, shape)
    check_shape(f"{name}.wscale.b", b.shape, shape[:1])
    params[name] = {"kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0), np.float32),
                    "bias": np.asarray(b, np.float32)}
  return params


def _check_keys(found: set[str], expected: set[str]) -> None:
  """Raises ValueError naming the missing and unexpected state-dict keys, if any."""
  missing, extra = sorted(expected - found), sorted(found - expected)
  if missing:
    raise ValueError(f"missing key(s) {', '.join(map(repr, missing))} in ProgGAN state dict")
  if extra:
    raise ValueError(f"unexpected key(s) {', '.join(map(repr, extra))} in ProgGAN state dict; "
                     f"expected keys: {', '.join(sorted(expected))}")


def export_state_dict(params: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
  """The inverse of `convert_state_dict`: params to netdissect key names and torch layout."""
  sd = {}
  for name, p in params.items():
    sd[f"{name}.conv.weight"] = np.asarray(p["kernel"]).transpose(3, 2, 0, 1).copy()
    sd[f"{name}.wscale.b"] = np.asarray(p["bias"]).copy()
  return sd


def load(path: str, *, hardtanh: bool = False) -> Generator:
  """A generator with the weights of a netdissect ProgGAN `.pth` file, read without torch.

  Accepts both torch file layouts, a `{'state_dict': ...}` wrapper and legacy `features.{i}`
  names. Raises `ports.pth.PthError` for an unreadable file, ValueError for a wrong state dict.
  """
  return from_state_dict(pth.load_state_dict(path), hardtanh=hardtanh)
