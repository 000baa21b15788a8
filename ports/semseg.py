"""The CSAIL ADE20K scene parsers (`semantic-segmentation-pytorch`) as jaxdissect segmenters.

Dissection measures units against a segmenter's masks, and GAN Dissection's published numbers
come from the CSAIL scene-parsing models, so this port loads their released checkpoints (an
`encoder_epoch_*.pth` and a `decoder_epoch_*.pth`) and reproduces their inference: the
original's input normalisation, encoder, decoder, bilinear resize of the logits to the output
size and softmax. Everything is a pure function of the params, hence differentiable and `vmap`/
`jit`-able like the rest of the library.

Supported pairs (`ARCHS`) are the released ADE20K models built from the deep-stem ResNets
(`ports.resnet`), the dilated MobileNetV2 (`ports.mobilenet`) and three decoders:
  * `ppm_deepsup`: pyramid pooling (adaptive average pools 1, 2, 3, 6), 3x3 conv, classifier;
  * `c1_deepsup`: one 3x3 conv and the classifier;
  * `upernet`: pyramid pooling plus a feature pyramid over the four encoder maps, fused.
The deep-supervision branches (`cbr_deepsup`, `conv_last_deepsup`) only train; the converter
accepts and drops their keys. PyTorch's resampling is reproduced exactly: `resize_bilinear` is
`F.interpolate(mode='bilinear', align_corners=False)` without antialiasing (also when it shrinks),
and `adaptive_avg_pool` uses `nn.AdaptiveAvgPool2d`'s bins.

Params are `{"encoder": ..., "decoder": ...}`; a leaf's path joined with dots, with `kernel`,
`scale`, `bias`, `mean`, `var` read as `weight`, `weight`, `bias`, `running_mean`,
`running_var`, is its PyTorch key. Conv kernels are HWIO (the torch `(O, I, kh, kw)` transposed).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, NamedTuple, Sequence

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.errors import check_choice, check_shape
from jaxdissect.model import Segmenter
from ports.ade20k_names import NAMES, NUM_CLASSES
from ports.mobilenet import MobileNetV2Dilated
from ports.resnet import conv, conv_bn, resnet

ARCHS = (
    "resnet18dilated-ppm_deepsup",
    "resnet18dilated-c1_deepsup",
    "resnet50dilated-ppm_deepsup",
    "resnet101dilated-ppm_deepsup",
    "mobilenetv2dilated-c1_deepsup",
    "resnet50-upernet",
    "resnet101-upernet",
)

# The original's test-time normalisation: RGB in [0, 1], then ImageNet mean and std.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# Label 0 is "no label"; ADE20K class i (output channel i) is label i + 1.
CONCEPTS: tuple[tuple[str, str], ...] = (("-", "-"),) + tuple((n, "object") for n in NAMES)

POOL_SCALES = (1, 2, 3, 6)
PPM_CHANNELS = 512
UPERNET_FPN_DIM = 512

# Convolutions in full float32, as the original computes them on CPU. On NVIDIA GPUs "default"
# lets XLA use TF32: 4-6x faster for the ResNet models on an H100 (1.4x for MobileNetV2), but
# class probabilities then differ from the original's float32 ones by up to 2.4e-2 (measured on
# random-weight models), where "highest" stays within 5e-5.
DEFAULT_PRECISION = "highest"

_HIGHEST = jax.lax.Precision.HIGHEST


# --- PyTorch-exact resampling -----------------------------------------------------------------

def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, ...]:
  """Source indices and weights `(i0, i1, w0, w1)` of PyTorch's align_corners=False bilinear.

  Source coordinate `(o + 0.5) * n_in / n_out - 0.5`, clamped below at 0, computed in float32 as
  PyTorch does; its floor and the next index (clamped to the edge) share the weight.
  """
  ratio = np.float32(n_in) / np.float32(n_out)
  src = ratio * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
  src = np.maximum(src, np.float32(0))
  i0 = np.minimum(src.astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
  return i0, i1, np.float32(1) - w1, w1


def _resize_axis(x: jax.Array, axis: int, n_out: int) -> jax.Array:
  """Bilinear resize of one axis of `x` to `n_out` (identity when the size already matches)."""
  n_in = x.shape[axis]
  if n_in == n_out:
    return x
  i0, i1, w0, w1 = _bilinear_taps(n_in, n_out)
  shape = [1] * x.ndim
  shape[axis] = n_out
  w0, w1 = (jnp.asarray(w.reshape(shape), x.dtype) for w in (w0, w1))
  return jnp.take(x, i0, axis=axis) * w0 + jnp.take(x, i1, axis=axis) * w1


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """`[B, H, W, C] -> [B, *size, C]` exactly as `F.interpolate(x, size, mode='bilinear',
  align_corners=False)` (no antialiasing: shrinking samples two taps, as PyTorch does)."""
  check_shape("resize input", x.shape, (None, None, None, None))
  return _resize_axis(_resize_axis(x, 1, int(size[0])), 2, int(size[1]))


def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
  """`[n_out, n_in]` averaging weights of adaptive pooling: bin i is
  `floor(i * n_in / n_out) .. ceil((i + 1) * n_in / n_out)` (end exclusive)."""
  m = np.zeros((n_out, n_in), np.float32)
  for i in range(n_out):
    start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
    m[i, start:end] = 1.0 / (end - start)
  return m


def adaptive_avg_pool(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """`nn.AdaptiveAvgPool2d(size)` of `[B, H, W, C]` (bins may overlap or be one pixel)."""
  check_shape("pooling input", x.shape, (None, None, None, None))
  mh = _pool_matrix(x.shape[1], int(size[0]))
  mw = _pool_matrix(x.shape[2], int(size[1]))
  return jnp.einsum("ih,bhwc,jw->bijc", mh, x, mw, precision=_HIGHEST)


# --- Decoders -----------------------------------------------------------------------------------

class PPMDecoder(nn.Module):
  """`ppm_deepsup` at inference: pyramid pooling over the last map, 3x3 conv, 1x1 classifier."""

  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, maps: Sequence[jax.Array]) -> jax.Array:
    conv5 = maps[-1]
    branches = [conv5]
    for i, scale in enumerate(POOL_SCALES):
      y = adaptive_avg_pool(conv5, (scale, scale))
      y = conv_bn(y, PPM_CHANNELS, 1, f"ppm.{i}.1", f"ppm.{i}.2")
      branches.append(resize_bilinear(y, conv5.shape[1:3]))
    x = conv_bn(jnp.concatenate(branches, -1), PPM_CHANNELS, 3, "conv_last.0", "conv_last.1")
    # conv_last.3 is Dropout2d, the identity at inference.
    return conv(self.num_classes, 1, bias=True, name="conv_last.4")(x)


class C1Decoder(nn.Module):
  """`c1_deepsup` at inference: 3x3 conv to `fc_dim // 4` channels, then the 1x1 classifier."""

  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, maps: Sequence[jax.Array]) -> jax.Array:
    conv5 = maps[-1]
    x = conv_bn(conv5, conv5.shape[-1] // 4, 3, "cbr.0", "cbr.1")
    return conv(self.num_classes, 1, bias=True, name="conv_last")(x)


class UPerNetDecoder(nn.Module):
  """`upernet`: pyramid pooling on the last map, a top-down feature pyramid over all four maps,
  fusion of the pyramid at the finest resolution, 3x3 conv, 1x1 classifier."""

  num_classes: int = NUM_CLASSES
  fpn_dim: int = UPERNET_FPN_DIM

  @nn.compact
  def __call__(self, maps: Sequence[jax.Array]) -> jax.Array:
    f = self._ppm(maps[-1])
    pyramid = [f]
    for i in reversed(range(len(maps) - 1)):
      lateral = conv_bn(maps[i], self.fpn_dim, 1, f"fpn_in.{i}.0", f"fpn_in.{i}.1")
      f = lateral + resize_bilinear(f, lateral.shape[1:3])
      pyramid.append(conv_bn(f, self.fpn_dim, 3, f"fpn_out.{i}.0.0", f"fpn_out.{i}.0.1"))
    pyramid.reverse()
    size = pyramid[0].shape[1:3]
    fused = jnp.concatenate([pyramid[0]] + [resize_bilinear(p, size) for p in pyramid[1:]], -1)
    x = conv_bn(fused, self.fpn_dim, 3, "conv_last.0.0", "conv_last.0.1")
    return conv(self.num_classes, 1, bias=True, name="conv_last.1")(x)

  def _ppm(self, conv5: jax.Array) -> jax.Array:
    """Pool, resize back, *then* conv-BN-ReLU (the order of the original's UPerNet)."""
    branches = [conv5]
    for i, scale in enumerate(POOL_SCALES):
      y = resize_bilinear(adaptive_avg_pool(conv5, (scale, scale)), conv5.shape[1:3])
      branches.append(conv_bn(y, PPM_CHANNELS, 1, f"ppm_conv.{i}.0", f"ppm_conv.{i}.1"))
    return conv_bn(jnp.concatenate(branches, -1), self.fpn_dim, 3, "ppm_last_conv.0",
                   "ppm_last_conv.1")


class SegmentationNet(nn.Module):
  """Encoder then decoder: normalised `[B, H, W, 3]` -> logits at the decoder's resolution."""

  encoder: nn.Module
  decoder: nn.Module

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.decoder(self.encoder(x))


_DECODERS = {"ppm_deepsup": PPMDecoder, "c1_deepsup": C1Decoder, "upernet": UPerNetDecoder}
_DEEPSUP_PREFIXES = ("cbr_deepsup.", "conv_last_deepsup.")


class _Arch(NamedTuple):
  encoder: str
  decoder: str


def _parse(arch: str) -> _Arch:
  """Splits a checked `ARCHS` name into encoder and decoder names."""
  check_choice("arch", arch, ARCHS)
  encoder, decoder = arch.split("-")
  return _Arch(encoder, decoder)


def _encoder(name: str) -> nn.Module:
  """The encoder module for an encoder name such as `resnet50dilated` or `mobilenetv2dilated`."""
  if name == "mobilenetv2dilated":
    return MobileNetV2Dilated(dilate_scale=8)
  dilated = name.endswith("dilated")
  depth = int(name.removeprefix("resnet").removesuffix("dilated"))
  return resnet(depth, dilate_scale=8 if dilated else None)


@functools.lru_cache(maxsize=None)
def network(arch: str) -> SegmentationNet:
  """The Flax module of `arch` (one of `ARCHS`)."""
  parts = _parse(arch)
  return SegmentationNet(_encoder(parts.encoder), _DECODERS[parts.decoder]())


# --- Inference ----------------------------------------------------------------------------------

def normalize(images: jax.Array) -> jax.Array:
  """Our `[-1, 1]` RGB images to the original's input: `[0, 1]`, minus ImageNet mean, over std."""
  x = (images + 1.0) / 2.0
  return (x - jnp.asarray(MEAN, x.dtype)) / jnp.asarray(STD, x.dtype)


def _check_images(images: jax.Array) -> None:
  """Raises ValueError unless `images` is a float `[B, H, W, 3]` batch."""
  check_shape("images", images.shape, (None, None, None, 3))
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images have dtype {images.dtype}, expected float in [-1, 1]")


def _check_seg_size(seg_size: Sequence[int] | None) -> tuple[int, int] | None:
  """None, or `seg_size` as a pair of positive ints (raises ValueError otherwise)."""
  if seg_size is None:
    return None
  size = tuple(seg_size)
  if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
    raise ValueError(f"seg_size {seg_size!r} is not a (height, width) pair of positive ints")
  return int(size[0]), int(size[1])


def logits(params: Any, images: jax.Array, arch: str, *, seg_size: Sequence[int] | None = None,
           precision: str = DEFAULT_PRECISION) -> jax.Array:
  """Class logits `[B, h, w, 150]`, resized bilinearly to `seg_size` (default: the image size).

  `images` are `[B, H, W, 3]` RGB in [-1, 1]. Softmax of this is the original's inference output.
  `precision` is the matmul precision of the network's convolutions (see `DEFAULT_PRECISION`).
  """
  _check_images(images)
  size = _check_seg_size(seg_size) or images.shape[1:3]
  with jax.default_matmul_precision(precision):
    out = network(arch).apply({"params": params}, normalize(images))
  return resize_bilinear(out, size)


def probabilities(params: Any, images: jax.Array, arch: str, *,
                  seg_size: Sequence[int] | None = None,
                  precision: str = DEFAULT_PRECISION) -> jax.Array:
  """The original's output: softmax over the 150 classes, `[B, h, w, 150]` (class i = NAMES[i])."""
  scores = logits(params, images, arch, seg_size=seg_size, precision=precision)
  return jax.nn.softmax(scores, axis=-1)


def make_segmenter(params: Any, arch: str, *, seg_size: Sequence[int] | None = None,
                   precision: str = DEFAULT_PRECISION) -> Segmenter:
  """The segmenter protocol object for converted `params` of `arch`.

  `segment_fn(params, images)` gives `[B, h, w, 151]` probabilities in `CONCEPTS` order: column 0
  ('-') is 0 (every pixel gets a class), column i + 1 is ADE20K class i. `label_fn` gives
  `[B, h, w, 1]` int32 labels, argmax class + 1. `(h, w)` is `seg_size` or the image size.
  """
  _parse(arch)
  seg_size = _check_seg_size(seg_size)
  options = {"seg_size": seg_size, "precision": precision}

  def segment_fn(params: Any, images: jax.Array) -> jax.Array:
    probs = probabilities(params, images, arch, **options)
    return jnp.pad(probs, ((0, 0), (0, 0), (0, 0), (1, 0)))

  def label_fn(params: Any, images: jax.Array) -> jax.Array:
    scores = logits(params, images, arch, **options)
    return (jnp.argmax(scores, axis=-1).astype(jnp.int32) + 1)[..., None]

  return Segmenter(segment_fn, label_fn, jax.tree.map(jnp.asarray, params), CONCEPTS)


def load(encoder_path: str, decoder_path: str, arch: str, *,
         seg_size: Sequence[int] | None = None, precision: str = DEFAULT_PRECISION) -> Segmenter:
  """The segmenter of a released CSAIL checkpoint pair (`encoder_epoch_*.pth`, `decoder_*.pth`)."""
  from ports import pth  # pylint: disable=import-outside-toplevel  (only file loading needs it)
  params = convert(pth.load_state_dict(encoder_path), pth.load_state_dict(decoder_path), arch)
  return make_segmenter(params, arch, seg_size=seg_size, precision=precision)


# --- Checkpoint conversion ----------------------------------------------------------------------

_TORCH_NAME = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}
# Buffers of the original's (synchronized) BatchNorm that inference does not use.
_BN_EXTRAS = (".num_batches_tracked", "._tmp_running_mean", "._tmp_running_var", "._running_iter")
_MODULE_PREFIX = "module."


@functools.lru_cache(maxsize=None)
def _template(arch: str) -> Mapping[str, Any]:
  """Parameter shapes of `arch` (abstract arrays; nothing is computed)."""
  image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(network(arch).init, jax.random.key(0), image)["params"]


def torch_layout(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
  """The torch key and shape of the param at `path` with our `shape`."""
  key = ".".join(path[:-1]) + "." + _TORCH_NAME[path[-1]]
  if path[-1] == "kernel":
    kh, kw, i, o = shape
    shape = (o, i, kh, kw)
  return key, tuple(shape)


def state_dict_shapes(arch: str) -> dict[str, dict[str, tuple[int, ...]]]:
  """The PyTorch keys and shapes `convert` expects for `arch`: `{"encoder": {key: shape},
  "decoder": {key: shape}}` (without the optional deep-supervision and BatchNorm extras)."""
  _parse(arch)
  return {part: dict(torch_layout(path, leaf.shape)
                     for path, leaf in flax.traverse_util.flatten_dict(tree).items())
          for part, tree in _template(arch).items()}


def _strip(sd: Mapping[str, Any], ignored_prefixes: tuple[str, ...]) -> dict[str, Any]:
  """Drops a DataParallel `module.` prefix, unused BatchNorm buffers and `ignored_prefixes`."""
  out = {}
  for key, value in sd.items():
    key = key.removeprefix(_MODULE_PREFIX)
    if key.endswith(_BN_EXTRAS) or key.startswith(ignored_prefixes):
      continue
    out[key] = value
  return out


def _listing(keys: Sequence[str], limit: int = 8) -> str:
  """`'a', 'b', ...` with at most `limit` names and the total when there are more."""
  shown = ", ".join(map(repr, keys[:limit]))
  return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def convert_part(sd: Mapping[str, Any], template: Mapping[str, Any], what: str,
                  ignored_prefixes: tuple[str, ...] = ()) -> dict[str, Any]:
  """One state dict to one params subtree, checking every key and shape."""
  sd = _strip(sd, ignored_prefixes)
  layout = {path: torch_layout(path, leaf.shape)
            for path, leaf in flax.traverse_util.flatten_dict(template).items()}
  expected = {key for key, _ in layout.values()}
  missing, extra = sorted(expected - set(sd)), sorted(set(sd) - expected)
  if missing:
    raise ValueError(f"{what} state dict is missing key(s) {_listing(missing)}")
  if extra:
    raise ValueError(f"{what} state dict has unexpected key(s) {_listing(extra)}; expected keys "
                     f"such as {_listing(sorted(expected), 4)}")
  flat = {}
  for path, (key, shape) in layout.items():
    value = np.asarray(sd[key], np.float32)
    check_shape(f"{what} {key!r}", value.shape, shape)
    flat[path] = np.ascontiguousarray(value.transpose(2, 3, 1, 0)) if len(shape) == 4 else value
  return flax.traverse_util.unflatten_dict(flat)


def convert(encoder_sd: Mapping[str, Any], decoder_sd: Mapping[str, Any], arch: str
            ) -> dict[str, Any]:
  """CSAIL encoder and decoder state dicts (numpy arrays) to this port's params for `arch`.

  Accepts keys with a `module.` prefix; drops the deep-supervision branch and the unused
  BatchNorm buffers. Raises ValueError naming any missing, unexpected or mis-shaped key.
  """
  parts = _parse(arch)
  template = _template(arch)
  deepsup = _DEEPSUP_PREFIXES if parts.decoder.endswith("_deepsup") else ()
  return {
      "encoder": convert_part(encoder_sd, template["encoder"], f"{parts.encoder} encoder"),
      "decoder": convert_part(decoder_sd, template["decoder"], f"{parts.decoder} decoder",
                               deepsup),
  }
