"""StyleGAN2 generator (Karras et al. 2020) as a Flax Linen module, with its checkpoint converter.

GAN Dissection's questions (which units draw trees, what ablating them does) apply to style-based
generators too, and StyleSpace showed that their *style channels* are often more disentangled
than feature maps. This port reproduces the official StyleGAN2(-ADA) generator (`NVlabs/
stylegan2-ada-pytorch`, `training/networks.py`: mapping network, modulated/demodulated 3x3 convs,
noise inputs, skip-architecture toRGB, FIR up-sampling, truncation) and exposes it through the
jaxdissect model protocol, with both kinds of units:

  * feature maps, after each conv's bias, LeakyReLU, gain and clamp: `b4.conv1`, `b8.conv0`,
    `b8.conv1`, ... `bR.conv1`, and each block's toRGB output `bN.torgb` (`[B, N, N, 3]`, before
    it is added to the up-sampled image); these are `Generator.layers`, in forward order;
  * style vectors, the per-layer affine transforms of w (`bN.conv0.style`, `bN.torgb.style`...),
    captured and edited as `[B, 1, 1, C]` maps (see `style_layers`); `apply_fn` accepts them in
    `capture` and `edits`, but they are not in `Generator.layers`, so default dissections keep
    to spatial units.

Computation is float32 throughout (checkpoints trained with fp16 blocks run here in fp32, as
the original does with `force_fp32=True`). Modulation scales activations rather than building
per-sample weights (the original's non-fused path; the same arithmetic up to rounding).

Params are a nested dict, conv kernels HWIO `[k, k, in, out]`, dense weights `[in, out]`, stored
unscaled (the equalized-learning-rate gains are applied in the forward pass, as in the original):
  `mapping`: `fc{i}` {`weight`, `bias`}, `w_avg` `[w_dim]` (the truncation centre);
  `b4`: `const` `[4, 4, C]`; each `conv0` / `conv1`: `weight`, `bias`, `noise_const` `[N, N]`,
    `noise_strength` `[]`, `affine` {`weight` `[w_dim, in]`, `bias`}; `torgb`: `weight`, `bias`,
    `affine`.
Noise is data: the checkpoint's fixed `noise_const` buffers (`noise='const'`, the default, as
the original's `generate.py`), none, or drawn from a `noise_key` passed to `apply_fn` (one key
for the batch, or one per image); with `noise_seed`, an image's random noise is keyed by the seed
and its latent's bits, so the same latent always gets the same noise (what a dissection, which
redraws image i for its report, needs).

The latent is z (`latent_space='z'`, the default) or w itself (`'w'`: the mapping network is
skipped; truncation still pulls the given w towards `w_avg`), e.g. to dissect W latents that an
inversion found. Either generator also captures (and edits) `w`, the mapping's output before
truncation, as `[B, 1, 1, w_dim]`; `seeded_w` maps a seeded z sample through it.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.errors import check_choice, check_shape
from jaxdissect.model import (ApplyFn, Edit, Generator, apply_edit, check_edits,
                              check_latent, check_layers)

_LEAK = 0.2
_LRELU_GAIN = math.sqrt(2)
_EPS = 1e-8
NOISE_MODES = ("const", "none", "random")
LATENT_SPACES = ("z", "w")
W = "w"  # the capturable mapping output


class Config(NamedTuple):
  """The static shape of a generator: everything but the weights (hashable, for `jit`)."""

  z_dim: int
  w_dim: int
  mapping_features: tuple[int, ...]  # (z_dim, hidden..., w_dim): one dense layer per step
  channels: tuple[int, ...]  # feature channels at resolutions 4, 8, ..., R
  img_channels: int = 3
  mapping_lr_multiplier: float = 0.01
  conv_clamp: float | None = None
  use_noise: bool = True
  resample_filter: tuple[tuple[float, ...], ...] = ()  # 2-D FIR filter; () = [1, 3, 3, 1]

  @property
  def resolution(self) -> int:
    return 4 * 2 ** (len(self.channels) - 1)

  @property
  def resolutions(self) -> tuple[int, ...]:
    return tuple(4 * 2 ** i for i in range(len(self.channels)))

  @property
  def num_ws(self) -> int:
    """How many w vectors the synthesis network takes (one per conv, plus the last toRGB)."""
    return 2 * len(self.channels)

  def filter(self) -> np.ndarray:
    """The 2-D resampling filter, normalised to sum 1."""
    return np.asarray(self.resample_filter, np.float32) if self.resample_filter else fir_filter()


def fir_filter(taps: Sequence[float] = (1, 3, 3, 1)) -> np.ndarray:
  """The separable 2-D low-pass filter the original builds from 1-D taps, normalised to sum 1."""
  t = np.asarray(taps, np.float64)
  f = np.outer(t, t)
  return (f / f.sum()).astype(np.float32)


def config(resolution: int, *, z_dim: int = 512, w_dim: int = 512, channel_base: int = 32768,
           channel_max: int = 512, mapping_layers: int = 8, **kwargs: Any) -> Config:
  """The config of the original's `Generator(z_dim, 0, w_dim, resolution, 3, ...)` defaults.

  Channels at resolution r are `min(channel_base // r, channel_max)`, as in the original; other
  `Config` fields (e.g. `conv_clamp=256`) pass through.
  """
  if resolution < 4 or resolution & (resolution - 1):
    raise ValueError(f"resolution {resolution} is not a power of two >= 4")
  res = [4 * 2 ** i for i in range(int(math.log2(resolution)) - 1)]
  channels = tuple(min(channel_base // r, channel_max) for r in res)
  features = (z_dim,) + (w_dim,) * mapping_layers
  return Config(z_dim, w_dim, features, channels, **kwargs)


def _block_layers(res: int) -> tuple[str, ...]:
  return ("conv1", "torgb") if res == 4 else ("conv0", "conv1", "torgb")


def layer_names(cfg: Config) -> tuple[str, ...]:
  """The feature-map layers in forward order: `b4.conv1`, `b4.torgb`, `b8.conv0`, ..."""
  return tuple(f"b{r}.{n}" for r in cfg.resolutions for n in _block_layers(r))


def style_layers(cfg: Config) -> tuple[str, ...]:
  """The style-vector layers (StyleSpace units), one per conv and toRGB: `b4.conv1.style`, ..."""
  return tuple(f"{n}.style" for n in layer_names(cfg))


def w_index(cfg: Config) -> dict[str, int]:
  """Which of the `num_ws` w vectors each conv / toRGB layer is modulated by."""
  out = {}
  for k, r in enumerate(cfg.resolutions):
    for j, n in enumerate(_block_layers(r)):
      out[f"b{r}.{n}"] = 2 * k + j - (k > 0)
  return out


# --- Ops ---------------------------------------------------------------------------------------


def _lrelu_gain(x: jax.Array, clamp: float | None) -> jax.Array:
  """The original's `bias_act(act='lrelu')` after the bias: LeakyReLU(0.2) * sqrt(2), clamp."""
  x = nn.leaky_relu(x, _LEAK) * _LRELU_GAIN
  return x if clamp is None else jnp.clip(x, -clamp, clamp)


def _conv(x: jax.Array, kernel: jax.Array, padding: int, dilation: int = 1) -> jax.Array:
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((padding, padding), (padding, padding)), lhs_dilation=(dilation,) * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _fir(x: jax.Array, f: np.ndarray, padding: int, dilation: int = 1) -> jax.Array:
  """Depthwise FIR filtering (true convolution) of `[B, H, W, C]` after 2x zero insertion (the
  `dilation`, here or by a transposed conv before); the gain of 4 keeps a constant's level."""
  c = x.shape[-1]
  gain = 4.0
  k = jnp.asarray(np.tile((f[::-1, ::-1] * gain)[:, :, None, None], (1, 1, 1, c)), x.dtype)
  return jax.lax.conv_general_dilated(
      x, k, (1, 1), ((padding, padding), (padding, padding)), lhs_dilation=(dilation,) * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


def upsample2d(x: jax.Array, f: np.ndarray) -> jax.Array:
  """2x up-sampling by zero insertion and FIR filtering (the original's `upfirdn2d.upsample2d`).

  With a 4-tap filter the zero-inserted image is padded (2, 1) per axis; dilation leaves out the
  trailing zero, so (2, 2) here is the same.
  """
  return _fir(x, f, f.shape[0] // 2, dilation=2)


def modulated_conv(x: jax.Array, weight: jax.Array, styles: jax.Array, *, demodulate: bool,
                   up: bool = False, f: np.ndarray | None = None) -> jax.Array:
  """Conv of `x` with `weight` (HWIO) modulated per sample and input channel by `styles [B, I]`.

  Up-sampling is the original's transposed stride-2 conv followed by the FIR filter: the
  zero-inserted input correlated with the flipped kernel, then the filter with padding 1.
  """
  k = weight.shape[0]
  x = x * styles[:, None, None, :]
  if up:
    x = _conv(x, weight[::-1, ::-1], k - 1, dilation=2)
    x = _fir(x, f, (f.shape[0] - 2) // 2)  # already zero-inserted by the strided conv
  else:
    x = _conv(x, weight, k // 2)
  if demodulate:
    d = jax.lax.rsqrt(jnp.square(styles) @ jnp.sum(jnp.square(weight), axis=(0, 1)) + _EPS)
    x = x * d[:, None, None, :]
  return x


# --- Modules -----------------------------------------------------------------------------------


class _Dense(nn.Module):
  """Equalized-learning-rate dense layer: `x @ (weight * lr / sqrt(in)) + bias * lr`."""

  features: int
  lr_multiplier: float = 1.0
  bias_init: float = 0.0
  lrelu: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w = self.param("weight", nn.initializers.normal(1.0), (x.shape[-1], self.features))
    b = self.param("bias", nn.initializers.constant(self.bias_init), (self.features,))
    y = x @ (w * (self.lr_multiplier / math.sqrt(x.shape[-1]))) + b * self.lr_multiplier
    return _lrelu_gain(y, None) if self.lrelu else y


class _Mapping(nn.Module):
  """z -> w: 2nd-moment normalisation, then LeakyReLU dense layers; `w_avg` for truncation."""

  cfg: Config

  @nn.compact
  def __call__(self, z: jax.Array, skip: bool = False) -> tuple[jax.Array, jax.Array]:
    w_avg = self.param("w_avg", nn.initializers.zeros, (self.cfg.w_dim,))
    if skip:  # the latent is w already
      return z, w_avg
    x = z * jax.lax.rsqrt(jnp.mean(jnp.square(z), axis=1, keepdims=True) + _EPS)
    for i, n in enumerate(self.cfg.mapping_features[1:]):
      x = _Dense(n, self.cfg.mapping_lr_multiplier, lrelu=True, name=f"fc{i}")(x)
    return x, w_avg


class _Styled(nn.Module):
  """A modulated conv (3x3 `SynthesisLayer`, or 1x1 undemodulated `ToRGBLayer`).

  Returns `(output, style)`: the style is the affine transform of `w`, before its edit; the
  output is taken after the activation (conv) or bias (toRGB), before its edit.
  """

  features: int
  resolution: int
  cfg: Config
  up: bool = False
  torgb: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, w: jax.Array, style_edit: Edit | None, name: str,
               noise: Any) -> tuple[jax.Array, jax.Array]:
    k = 1 if self.torgb else 3
    c_in = x.shape[-1]
    style = _Dense(c_in, bias_init=1.0, name="affine")(w)
    s = apply_edit(style[:, None, None, :], style_edit, f"{name}.style")[:, 0, 0, :]
    weight = self.param("weight", nn.initializers.normal(1.0), (k, k, c_in, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    if self.torgb:
      x = modulated_conv(x, weight, s / math.sqrt(c_in), demodulate=False)
      x = x + bias
      clamp = self.cfg.conv_clamp
      return (x if clamp is None else jnp.clip(x, -clamp, clamp)), style
    x = modulated_conv(x, weight, s, demodulate=True, up=self.up, f=self.cfg.filter())
    if self.cfg.use_noise:
      r = self.resolution
      strength = self.param("noise_strength", nn.initializers.zeros, ())
      const = self.param("noise_const", nn.initializers.normal(1.0), (r, r))
      if isinstance(noise, str):
        if noise == "const":
          x = x + (const * strength)[None, :, :, None]
      elif jnp.ndim(noise):  # one key per image
        draw = jax.vmap(lambda k: jax.random.normal(k, (r, r, 1), x.dtype))
        x = x + draw(noise) * strength
      else:
        x = x + jax.random.normal(noise, (x.shape[0], r, r, 1), x.dtype) * strength
    return _lrelu_gain(x + bias, self.cfg.conv_clamp), style


class StyleGAN2(nn.Module):
  """The generator: `z [B, z_dim] -> (image [B, R, R, img_channels], acts)`.

  `edits` maps layer names (feature maps or `*.style`) to `Edit`s; `capture` names the layers
  whose pre-edit values are returned. `noise` is 'const', 'none' or a PRNG key (random noise).
  """

  cfg: Config
  truncation_psi: float = 1.0
  truncation_cutoff: int | None = None
  latent_space: str = "z"

  @nn.compact
  def __call__(self, z: jax.Array, edits: Mapping[str, Edit] | None = None,
               capture: tuple[str, ...] = (), noise: Any = "const", ws_only: bool = False
               ) -> Any:
    """`(image, acts)`; with `ws_only`, the mapping's `[B, num_ws, w_dim]` output alone."""
    cfg, edits = self.cfg, edits or {}
    w, w_avg = _Mapping(cfg, name="mapping")(z, skip=self.latent_space == "w")
    acts = {}
    if W in capture:
      acts[W] = w[:, None, None, :]
    w = apply_edit(w[:, None, None, :], edits.get(W), W)[:, 0, 0, :]
    ws = jnp.repeat(w[:, None, :], cfg.num_ws, axis=1)
    if self.truncation_psi != 1:
      cut = cfg.num_ws if self.truncation_cutoff is None else self.truncation_cutoff
      mask = (jnp.arange(cfg.num_ws) < cut)[None, :, None]
      ws = jnp.where(mask, w_avg + self.truncation_psi * (ws - w_avg), ws)
    if ws_only:
      return ws
    index = w_index(cfg)
    x = img = None
    for r, c in zip(cfg.resolutions, cfg.channels):
      block = f"b{r}"
      if x is None:
        const = self.param(f"{block}_const", nn.initializers.normal(1.0), (4, 4, c))
        x = jnp.broadcast_to(const, (ws.shape[0], 4, 4, c))
      for n in _block_layers(r):
        name = f"{block}.{n}"
        layer_noise = (noise if isinstance(noise, str) else
                       jax.vmap(jax.random.fold_in, (0, None))(noise, index[name])
                       if jnp.ndim(noise) else jax.random.fold_in(noise, index[name]))
        module = _Styled(cfg.img_channels if n == "torgb" else c, r, cfg, up=n == "conv0",
                         torgb=n == "torgb", name=f"{block}_{n}")
        y, style = module(x, ws[:, index[name]], edits.get(f"{name}.style"), name, layer_noise)
        if f"{name}.style" in capture:
          acts[f"{name}.style"] = style[:, None, None, :]
        if name in capture:
          acts[name] = y
        y = apply_edit(y, edits.get(name), name)
        if n == "torgb":
          img = y if img is None else upsample2d(img, cfg.filter()) + y
        else:
          x = y
    return img, acts


def latent_noise_keys(z: jax.Array, seed: int) -> jax.Array:
  """One PRNG key per latent row of `z [B, D]`: `seed`'s key with every float32 bit pattern of
  the row folded in, so the same latent always gets the same key (in any batch)."""
  bits = jax.lax.bitcast_convert_type(jnp.asarray(z, jnp.float32), jnp.uint32)

  def one(row):
    first = jax.random.fold_in(jax.random.key(seed), row[0])  # a carry that varies with z
    return jax.lax.fori_loop(1, row.shape[0], lambda i, k: jax.random.fold_in(k, row[i]), first)

  return jax.vmap(one)(bits)


def make_apply_fn(cfg: Config, *, truncation_psi: float = 1.0,
                  truncation_cutoff: int | None = None, noise: str = "const",
                  noise_seed: int | None = None, latent_space: str = "z") -> ApplyFn:
  """The protocol `apply_fn(params, z, edits=None, capture=None, noise_key=None)` for `cfg`.

  `noise` is 'const' (the checkpoint's fixed noise), 'none', or 'random': then a call passes
  `noise_key`, a PRNG key (images in a batch get independent noise) or one key per image `[B]`;
  with `noise_seed` a call may leave it out, and each image's noise is keyed by
  `latent_noise_keys(z, noise_seed)`. `latent_space` 'w' takes w `[B, w_dim]` as the latent.
  """
  check_choice("noise mode", noise, NOISE_MODES)
  check_choice("latent space", latent_space, LATENT_SPACES)
  module = StyleGAN2(cfg, float(truncation_psi), truncation_cutoff, latent_space)
  layers = layer_names(cfg)
  names = layers + style_layers(cfg) + (W,)
  dim = cfg.z_dim if latent_space == "z" else cfg.w_dim

  def apply_fn(params: Any, z: jax.Array, edits: Mapping[str, Edit] | None = None,
               capture: Sequence[str] | str | None = None, noise_key: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs the generator on `z [B, z_dim]` (or w); returns `(image [B, R, R, 3], acts)`."""
    z = check_latent(z, dim)
    edits, captured = check_edits(edits, names), check_layers(capture, names)
    if noise_key is None and noise == "random" and noise_seed is not None:
      noise_key = latent_noise_keys(z, noise_seed)
    if (noise == "random") != (noise_key is not None):
      raise ValueError(f"noise_key is {'required' if noise == 'random' else 'only used'} with "
                       f"noise='random' (this generator's noise mode is {noise!r})")
    mode = noise_key if noise == "random" else noise
    return module.apply({"params": _flax_params(params)}, z, edits, captured, mode)

  return apply_fn


def _flax_params(params: Mapping[str, Any]) -> dict[str, Any]:
  """The published nested layout (`b8` -> `conv0`) as the Flax module's flat submodule names."""
  out = {"mapping": params["mapping"]}
  for block, p in params.items():
    if block == "mapping":
      continue
    for n, v in p.items():
      out[f"{block}_{n}"] = v
  return out


def mapping_fn(cfg: Config, *, truncation_psi: float = 1.0,
               truncation_cutoff: int | None = None) -> Any:
  """`fn(params, z) -> ws [B, num_ws, w_dim]`: the mapping network alone (for W-space work)."""
  module = StyleGAN2(cfg, float(truncation_psi), truncation_cutoff)
  return lambda params, z: module.apply({"params": _flax_params(params)},
                                       check_latent(z, cfg.z_dim), ws_only=True)


def from_state_dict(sd: Mapping[str, Any], *, truncation_psi: float = 1.0,
                    truncation_cutoff: int | None = None, noise: str = "const",
                    noise_seed: int | None = None, latent_space: str = "z",
                    **config_overrides: Any) -> Generator:
  """A generator with the weights of an NVlabs `G_ema.state_dict()` (numpy arrays).

  What a state dict does not record (`mapping_lr_multiplier`, `conv_clamp`) comes from
  `config_overrides`, default the original's defaults (0.01, None).
  """
  cfg = config_from_state_dict(sd, **config_overrides)
  return generator_with(cfg, convert_state_dict(sd, cfg), truncation_psi=truncation_psi,
                        truncation_cutoff=truncation_cutoff, noise=noise, noise_seed=noise_seed,
                        latent_space=latent_space)


def generator_with(cfg: Config, params: Any, **options: Any) -> Generator:
  """The protocol `Generator` of this port's `params` for `cfg` (`options` as `make_apply_fn`):
  its feature-map layers, and a latent of z_dim, or w_dim with `latent_space='w'`."""
  latent = cfg.w_dim if options.get("latent_space", "z") == "w" else cfg.z_dim
  return Generator(make_apply_fn(cfg, **options), params, layer_names(cfg), (latent,))


def seeded_w(gen: Generator, n: int, seed: int, batch_size: int = 256) -> np.ndarray:
  """The first `n` rows `[n, w_dim]` of seed `seed`'s z sample (`jaxdissect.zsample`, prefix-
  stable) mapped to w by `gen`'s mapping network, before truncation: the seeded sample of a
  `latent_space='w'` generator, whose images are then those of the z sample (at psi 1).
  `gen` is the checkpoint's z-space generator (any truncation and noise)."""
  from jaxdissect import zsample  # pylint: disable=g-import-not-at-top
  w_of = jax.jit(lambda p, z: gen.apply_fn(p, z, capture=(W,))[1][W][:, 0, 0, :])
  out = [np.asarray(w_of(gen.params, z), np.float32)
         for _, z in zsample.z_batches(n, seed, batch_size, gen.zdim)]
  w_dim = int(np.shape(gen.params["mapping"]["w_avg"])[-1])
  return np.concatenate(out) if out else np.zeros((0, w_dim), np.float32)


# --- Checkpoint conversion (NVlabs state dict as numpy arrays) ----------------------------------

_BLOCK = re.compile(r"^synthesis\.b(\d+)\.")


def config_from_state_dict(sd: Mapping[str, Any], **overrides: Any) -> Config:
  """The `Config` read from an NVlabs generator state dict's key names and shapes."""
  if "mapping.embed.weight" in sd:
    raise ValueError("a class-conditional generator (mapping.embed.weight, c_dim > 0) is not "
                     "supported; only unconditional ones (c_dim = 0)")
  n = 0
  while f"mapping.fc{n}.weight" in sd:
    n += 1
  if n == 0:
    raise ValueError(f"no 'mapping.fc0.weight' in the state dict, so not an NVlabs StyleGAN2 "
                     f"generator; keys: {', '.join(sorted(sd)[:20])}")
  features = (int(np.shape(sd["mapping.fc0.weight"])[1]),) + tuple(
      int(np.shape(sd[f"mapping.fc{i}.weight"])[0]) for i in range(n))
  res = sorted({int(m.group(1)) for m in map(_BLOCK.match, sd) if m})
  want = [4 * 2 ** i for i in range(len(res))]
  if res != want:
    raise ValueError(f"synthesis blocks at resolutions {res}; expected {want}")
  channels = tuple(int(np.shape(sd[f"synthesis.b{r}.conv1.weight"])[0]) for r in res)
  img_channels = int(np.shape(sd[f"synthesis.b{res[-1]}.torgb.weight"])[0])
  f = np.asarray(sd.get("synthesis.b4.resample_filter", fir_filter()), np.float32)
  fields = dict(img_channels=img_channels, use_noise="synthesis.b4.conv1.noise_const" in sd,
                resample_filter=tuple(map(tuple, f.tolist())))
  fields.update(overrides)
  return Config(features[0], features[-1], features, channels, **fields)


def _dense(sd: Mapping[str, Any], key: str) -> dict[str, np.ndarray]:
  return {"weight": np.ascontiguousarray(np.asarray(sd[f"{key}.weight"], np.float32).T),
          "bias": np.asarray(sd[f"{key}.bias"], np.float32)}


def _hwio(w: Any) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(w, np.float32).transpose(2, 3, 1, 0))


def expected_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
  """Every key of the NVlabs `G_ema.state_dict()` for `cfg`, with its torch shape."""
  shapes: dict[str, tuple[int, ...]] = {}
  fs = cfg.mapping_features
  for i in range(len(fs) - 1):
    shapes[f"mapping.fc{i}.weight"] = (fs[i + 1], fs[i])
    shapes[f"mapping.fc{i}.bias"] = (fs[i + 1],)
  shapes["mapping.w_avg"] = (cfg.w_dim,)
  f = cfg.filter().shape
  c_prev = None
  for r, c in zip(cfg.resolutions, cfg.channels):
    p = f"synthesis.b{r}"
    shapes[f"{p}.resample_filter"] = f
    if r == 4:
      shapes[f"{p}.const"] = (c, 4, 4)
    for n in _block_layers(r):
      c_in = c_prev if n == "conv0" else c
      c_out, k = (cfg.img_channels, 1) if n == "torgb" else (c, 3)
      shapes[f"{p}.{n}.weight"] = (c_out, c_in, k, k)
      shapes[f"{p}.{n}.bias"] = (c_out,)
      shapes[f"{p}.{n}.affine.weight"] = (c_in, cfg.w_dim)
      shapes[f"{p}.{n}.affine.bias"] = (c_in,)
      if n != "torgb":
        shapes[f"{p}.{n}.resample_filter"] = f
        if cfg.use_noise:
          shapes[f"{p}.{n}.noise_const"] = (r, r)
          shapes[f"{p}.{n}.noise_strength"] = ()
    c_prev = c
  return shapes


def convert_state_dict(sd: Mapping[str, Any], cfg: Config | None = None
                       ) -> dict[str, dict[str, Any]]:
  """Converts an NVlabs StyleGAN2 generator state dict (numpy arrays) to this port's params.

  Raises ValueError naming any missing, unexpected or mis-shaped key, or a resampling filter
  that differs between layers.
  """
  cfg = cfg or config_from_state_dict(sd)
  shapes = expected_shapes(cfg)
  missing, extra = sorted(set(shapes) - set(sd)), sorted(set(sd) - set(shapes))
  if missing or extra:
    raise ValueError(f"StyleGAN2 state dict: missing key(s) {missing or 'none'}, unexpected "
                     f"key(s) {extra or 'none'}")
  for key, shape in shapes.items():
    check_shape(key, np.shape(sd[key]), shape)
    if key.endswith("resample_filter") and not np.allclose(sd[key], cfg.filter(), atol=1e-7):
      raise ValueError(f"{key} differs from the generator's resampling filter {cfg.filter()}")
  params: dict[str, dict[str, Any]] = {"mapping": {
      f"fc{i}": _dense(sd, f"mapping.fc{i}") for i in range(len(cfg.mapping_features) - 1)}}
  params["mapping"]["w_avg"] = np.asarray(sd["mapping.w_avg"], np.float32)
  for r in cfg.resolutions:
    p, block = f"synthesis.b{r}", {}
    if r == 4:
      block["const"] = np.ascontiguousarray(np.asarray(sd[f"{p}.const"], np.float32)
                                            .transpose(1, 2, 0))
    for n in _block_layers(r):
      layer = {"weight": _hwio(sd[f"{p}.{n}.weight"]),
               "bias": np.asarray(sd[f"{p}.{n}.bias"], np.float32),
               "affine": _dense(sd, f"{p}.{n}.affine")}
      if n != "torgb" and cfg.use_noise:
        layer["noise_const"] = np.asarray(sd[f"{p}.{n}.noise_const"], np.float32)
        layer["noise_strength"] = np.asarray(sd[f"{p}.{n}.noise_strength"], np.float32)
      block[n] = layer
    params[f"b{r}"] = block
  return params


def random_state_dict(cfg: Config, seed: int) -> dict[str, np.ndarray]:
  """An NVlabs-layout state dict of random float32 weights from `numpy.random.default_rng(seed)`.

  Weights are N(0, 1) as the original initialises them (mapping weights / lr multiplier); unlike
  a fresh network, biases, noise strengths and `w_avg` are nonzero and affine biases are 1 +
  N(0, 0.1), so that every term of the forward pass is exercised (the parity goldens use this).
  Keys are drawn in `expected_shapes` order.
  """
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in expected_shapes(cfg).items():
    if key.endswith("resample_filter"):
      v = cfg.filter()
    elif key.startswith("mapping.fc") and key.endswith("weight"):
      v = rng.standard_normal(shape) / cfg.mapping_lr_multiplier
    elif key.endswith("affine.bias"):
      v = 1 + 0.1 * rng.standard_normal(shape)
    elif key.endswith("noise_strength"):
      v = rng.uniform(0.1, 0.5, shape)
    elif key.endswith("bias") or key == "mapping.w_avg":
      v = 0.2 * rng.standard_normal(shape)
    else:
      v = rng.standard_normal(shape)
    sd[key] = np.asarray(v, np.float32)
  return sd


def initial_state_dict(cfg: Config, seed: int) -> dict[str, np.ndarray]:
  """A fresh NVlabs-layout state dict initialised as the original does before training.

  Weights N(0, 1) (mapping weights N(0, 1) / lr multiplier), `const` and `noise_const` N(0, 1),
  affine biases 1, all other biases, noise strengths and `w_avg` 0; from
  `numpy.random.default_rng(seed)`, keys drawn in `expected_shapes` order.
  """
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in expected_shapes(cfg).items():
    if key.endswith("resample_filter"):
      v = cfg.filter()
    elif key.endswith("affine.bias"):
      v = np.ones(shape)
    elif key.endswith(("bias", "noise_strength")) or key == "mapping.w_avg":
      v = np.zeros(shape)
    elif key.startswith("mapping.fc"):
      v = rng.standard_normal(shape) / cfg.mapping_lr_multiplier
    else:
      v = rng.standard_normal(shape)
    sd[key] = np.asarray(v, np.float32)
  return sd


def make_generator(cfg: Config, seed: int = 0, **options: Any) -> Generator:
  """A generator with `random_state_dict(cfg, seed)` weights (`options` as `from_state_dict`)."""
  return generator_with(cfg, convert_state_dict(random_state_dict(cfg, seed), cfg), **options)


# --- Checkpoint files --------------------------------------------------------------------------


def config_from_attributes(attrs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  """The `Config` fields an NVlabs pickle records in module attributes but a state dict does not
  (`conv_clamp`, the mapping's lr multiplier); ValueError for an architecture not ported."""
  block, layer = attrs.get("synthesis.b4", {}), attrs.get("synthesis.b4.conv1", {})
  if attrs.get("", {}).get("c_dim", 0):
    raise ValueError(f"a class-conditional generator (c_dim = {attrs['']['c_dim']}) is not "
                     "supported; only unconditional ones (c_dim = 0)")
  if block.get("architecture", "skip") != "skip":
    raise ValueError(f"synthesis architecture {block['architecture']!r} is not supported; "
                     "only 'skip' (the StyleGAN2 generator's)")
  if layer.get("activation", "lrelu") != "lrelu":
    raise ValueError(f"synthesis activation {layer['activation']!r} is not supported; only "
                     "'lrelu'")
  fields: dict[str, Any] = {"conv_clamp": layer.get("conv_clamp")}
  if "bias_gain" in attrs.get("mapping.fc0", {}):
    fields["mapping_lr_multiplier"] = float(attrs["mapping.fc0"]["bias_gain"])
  return fields


_ROSINALITY_CONV = re.compile(r"^convs\.(\d+)\.(.*)$")
_ROSINALITY_RGB = re.compile(r"^to_rgbs\.(\d+)\.(.*)$")
_ROSINALITY_NOISE = re.compile(r"^noises\.noise_(\d+)$")


def rosinality_to_nvlabs(sd: Mapping[str, Any], latent_avg: Any = None) -> dict[str, np.ndarray]:
  """A `rosinality/stylegan2-pytorch` generator state dict in NVlabs names and conventions.

  The two compute the same function: rosinality's conv weights are `[1, out, in, k, k]` scaled
  by `1 / sqrt(in k k)` in the forward pass (folded in here: demodulation sees the same product),
  its noise buffers `noises.noise_{i}` are `[1, 1, N, N]`, its toRGB bias `[1, 3, 1, 1]`, its
  mapping `style.{i + 1}` (`style.0` is the normalisation). `latent_avg` (the converted
  checkpoints' truncation centre) becomes `mapping.w_avg`; without it w_avg is zero, so a
  truncation would pull towards the origin (`load` refuses that). Blur kernels are checked to be
  the [1, 3, 3, 1] filter's.
  """
  sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}
  if "input.input" not in sd:
    raise ValueError(f"no 'input.input' in the state dict, so not a rosinality StyleGAN2 "
                     f"generator; keys: {', '.join(sorted(sd)[:20])}")
  out: dict[str, np.ndarray] = {}
  conv_names: dict[str, str] = {"conv1": "synthesis.b4.conv1", "to_rgb1": "synthesis.b4.torgb"}
  noise_names = {0: "synthesis.b4.conv1"}
  n_convs = 1 + max([int(m.group(1)) for m in map(_ROSINALITY_CONV.match, sd) if m], default=-1)
  for i in range(n_convs):
    layer = f"synthesis.b{2 ** (i // 2 + 3)}.conv{i % 2}"
    conv_names[f"convs.{i}"], noise_names[i + 1] = layer, layer
  for i in range(n_convs // 2):
    conv_names[f"to_rgbs.{i}"] = f"synthesis.b{2 ** (i + 3)}.torgb"
  f4 = 4 * fir_filter()
  for key, v in sd.items():
    m = _ROSINALITY_NOISE.match(key)
    prefix, _, rest = key.partition(".")
    if prefix in ("convs", "to_rgbs"):
      index, _, rest = rest.partition(".")
      prefix = f"{prefix}.{index}"
    if key.startswith("style."):
      i, name = key.split(".")[1:]
      out[f"mapping.fc{int(i) - 1}.{name}"] = v
    elif key == "input.input":
      out["synthesis.b4.const"] = v[0]
    elif m:
      out[f"{noise_names[int(m.group(1))]}.noise_const"] = v[0, 0]
    elif prefix in conv_names:
      name = conv_names[prefix]
      if rest == "conv.weight":
        scale = 1.0 if name.endswith("torgb") else 1 / math.sqrt(math.prod(v.shape[2:]))
        out[f"{name}.weight"] = v[0] * np.float32(scale)
      elif rest.startswith("conv.modulation."):
        out[f"{name}.affine.{rest.rsplit('.', 1)[1]}"] = v
      elif rest == "noise.weight":
        out[f"{name}.noise_strength"] = v.reshape(())
      elif rest in ("activate.bias", "bias"):
        out[f"{name}.bias"] = v.reshape(-1)
      elif rest in ("conv.blur.kernel", "upsample.kernel"):
        if not np.allclose(v, f4, atol=1e-6):
          raise ValueError(f"{key} is not the [1, 3, 3, 1] filter this port supports")
      else:
        raise ValueError(f"unexpected key {key!r} in a rosinality StyleGAN2 state dict")
    else:
      raise ValueError(f"unexpected key {key!r} in a rosinality StyleGAN2 state dict")
  w_dim = out[f"mapping.fc{sum(k.startswith('style.') for k in sd) // 2 - 1}.weight"].shape[0]
  out["mapping.w_avg"] = (np.zeros(w_dim, np.float32) if latent_avg is None
                          else np.asarray(latent_avg, np.float32).reshape(w_dim))
  f = fir_filter()
  for r in [4 * 2 ** i for i in range(n_convs // 2 + 1)]:
    out[f"synthesis.b{r}.resample_filter"] = f
    for n in ("conv0", "conv1") if r > 4 else ("conv1",):
      out[f"synthesis.b{r}.{n}.resample_filter"] = f
  return out


def load(path: str, *, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
         noise: str = "const", noise_seed: int = 0, latent_space: str = "z",
         key: str | None = None) -> Generator:
  """A generator with the weights of a StyleGAN2 checkpoint file, read without torch.

  * `.pkl`: an NVlabs StyleGAN2(-ADA) network pickle, read by `ports.stylegan2_pkl` (nothing in
    it executed); `key` picks the network (default 'G_ema').
  * anything else: a `torch.save` file of `rosinality/stylegan2-pytorch` (read by `ports.pth`):
    a dict holding the generator state dict under `key` (default 'g_ema') and optionally
    `latent_avg`, or the bare state dict. Its training checkpoints also pickle their argparse
    flags, which `ports.pth` refuses; `convert_weight.py`'s outputs load.
  `truncation_psi` < 1 pulls w towards the checkpoint's `w_avg` in the first `truncation_cutoff`
  layers (all by default). `noise='random'` keys each image's noise by `noise_seed` and its
  latent (`make_apply_fn`); `latent_space='w'` takes w latents. Raises `stylegan2_pkl.PklError`
  / `pth.PthError` for a refused or unreadable file, ValueError for an unsupported network.
  """
  options = dict(truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, noise=noise,
                 noise_seed=noise_seed, latent_space=latent_space)
  if str(path).endswith(".pkl"):
    from ports import stylegan2_pkl  # pylint: disable=g-import-not-at-top
    sd, attrs = stylegan2_pkl.load_network(path, key or "G_ema")
    return from_state_dict(sd, **options, **config_from_attributes(attrs))
  from ports import pth  # pylint: disable=g-import-not-at-top
  obj = pth.load(path)
  latent_avg = None
  if isinstance(obj, Mapping) and (key or "g_ema") in obj:
    latent_avg = obj.get("latent_avg")
    obj = obj[key or "g_ema"]
  elif key is not None:
    raise ValueError(f"{path}: no entry {key!r} in the checkpoint")
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path}: expected a generator state dict, found a {type(obj).__name__}")
  if latent_avg is None and truncation_psi != 1:
    raise ValueError(f"{path} has no 'latent_avg' (the truncation centre), so truncation_psi "
                     f"{truncation_psi} cannot be applied")
  return from_state_dict(rosinality_to_nvlabs(obj, latent_avg), **options)
