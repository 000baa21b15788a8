"""The network of the unified-parsing segmenter: ResNet-50 encoder and the UPP UPerNet decoder.

The decoder follows netdissect's `upsegmodel`: pyramid pooling with Precise RoI pooling
(`prroi_pool`) over the whole map, a feature pyramid, a fusion conv and three heads (object and
part on the fused map, material on the finest pyramid level). The encoder is the non-dilated
deep-stem ResNet-50 of `ports.resnet`. Parameter names follow the PyTorch keys (`ports.semseg`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.errors import check_shape
from ports import semseg
from ports.resnet import conv, conv_bn, resnet

POOL_SCALES = (1, 2, 3, 6)
PPM_CHANNELS = 512
FPN_DIM = 512

_HIGHEST = jax.lax.Precision.HIGHEST


# --- Precise RoI pooling --------------------------------------------------------------------------

def _hat_cdf(t: np.ndarray) -> np.ndarray:
  """`integral_{-inf}^t max(0, 1 - |u|) du`: 0 below -1, 1 above 1, two parabolas between."""
  t = np.clip(t, -1.0, 1.0)
  return np.where(t < 0, 0.5 * (t + 1.0) ** 2, 1.0 - 0.5 * (1.0 - t) ** 2)


def prroi_weights(n: int, bins: int) -> np.ndarray:
  """`[bins, n]` weights of Precise RoI pooling of one axis of length `n` into `bins` bins.

  The ROI is the whole axis `[0, n]`; bin p is `[a, b] = [p n / bins, (p + 1) n / bins]`. Sample
  k lives at coordinate k and the signal is the linear interpolation of the samples, zero beyond
  `[0, n - 1]` (it falls to zero over `[n - 1, n]`), so sample k's weight is the bin mean of its
  hat function: `(1 / (b - a)) * integral_a^b max(0, 1 - |t - k|) dt`.
  """
  if n < 1 or bins < 1:
    raise ValueError(f"PrRoI pooling needs a positive axis length and bin count, got n={n}, "
                     f"bins={bins}")
  edges = np.arange(bins + 1, dtype=np.float64) * (n / bins)
  a, b = edges[:-1, None], edges[1:, None]
  k = np.arange(n, dtype=np.float64)[None, :]
  return ((_hat_cdf(b - k) - _hat_cdf(a - k)) / (b - a)).astype(np.float32)


def prroi_pool(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Precise RoI pooling of all of `[B, H, W, C]` into `size = (h, w)` bins: `[B, h, w, C]`.

  The bin value is the mean over the bin of the bilinear surface through the samples (zero
  outside the map); the integral separates into one `prroi_weights` matrix per axis.
  """
  check_shape("feature map", x.shape, (None, None, None, None))
  wh = prroi_weights(x.shape[1], int(size[0]))
  ww = prroi_weights(x.shape[2], int(size[1]))
  return jnp.einsum("ih,bhwc,jw->bijc", wh, x, ww, precision=_HIGHEST)


# --- Network --------------------------------------------------------------------------------------

class Logits(NamedTuple):
  """Decoder outputs at the finest pyramid level (1/4 of the input): `[B, h, w, classes]`."""

  object: jax.Array
  part: jax.Array
  material: jax.Array


class UPerNetUPP(nn.Module):
  """The unified-parsing UPerNet decoder: encoder maps -> object, part and material logits.

  Scene classification (`scene_head`) is not computed: nothing in dissection reads it.
  """

  num_objects: int
  num_parts: int
  num_materials: int
  fpn_dim: int = FPN_DIM

  @nn.compact
  def __call__(self, maps: Sequence[jax.Array]) -> Logits:
    f = self._ppm(maps[-1])
    pyramid = [f]
    for i in reversed(range(len(maps) - 1)):
      lateral = conv_bn(maps[i], self.fpn_dim, 1, f"fpn_in.{i}.0", f"fpn_in.{i}.1")
      f = lateral + semseg.resize_bilinear(f, lateral.shape[1:3])
      pyramid.append(conv_bn(f, self.fpn_dim, 3, f"fpn_out.{i}.0.0", f"fpn_out.{i}.0.1"))
    pyramid.reverse()
    material = self._head(pyramid[0], self.num_materials, "material_head")
    size = pyramid[0].shape[1:3]
    fused = jnp.concatenate(
        [pyramid[0]] + [semseg.resize_bilinear(p, size) for p in pyramid[1:]], -1)
    x = conv_bn(fused, self.fpn_dim, 3, "conv_fusion.0", "conv_fusion.1")
    return Logits(self._head(x, self.num_objects, "object_head"),
                  self._head(x, self.num_parts, "part_head"), material)

  def _ppm(self, conv5: jax.Array) -> jax.Array:
    """PrRoI-pool at each scale, resize back, conv-BN-ReLU; concat with conv5; 3x3 conv-BN-ReLU."""
    branches = [conv5]
    for i, scale in enumerate(POOL_SCALES):
      y = semseg.resize_bilinear(prroi_pool(conv5, (scale, scale)), conv5.shape[1:3])
      branches.append(conv_bn(y, PPM_CHANNELS, 1, f"ppm_conv.{i}.0", f"ppm_conv.{i}.1"))
    return conv_bn(jnp.concatenate(branches, -1), self.fpn_dim, 3, "ppm_last_conv.0",
                   "ppm_last_conv.1")

  def _head(self, x: jax.Array, classes: int, name: str) -> jax.Array:
    """3x3 conv-BN-ReLU (`{name}.0`) then a 1x1 conv with bias (`{name}.1`)."""
    x = conv_bn(x, self.fpn_dim, 3, f"{name}.0.0", f"{name}.0.1")
    return conv(classes, 1, bias=True, name=f"{name}.1")(x)


@functools.lru_cache(maxsize=None)
def network(num_objects: int, num_parts: int, num_materials: int) -> semseg.SegmentationNet:
  """ResNet-50 + UPP UPerNet with heads of these sizes (each counting its '-' class)."""
  return semseg.SegmentationNet(resnet(50), UPerNetUPP(num_objects, num_parts, num_materials))

