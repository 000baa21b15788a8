"""The dilated MobileNetV2 encoder of the CSAIL ADE20K segmenter `mobilenetv2dilated-c1_deepsup`.

It is the lightest of the CSAIL segmenters, useful when the segmenter's cost dominates a
dissection. The network is MobileNetV2 (width 1.0) without its final 1x1 conv, with the last two
strided stages turned into dilated stride-1 stages (output stride 8), as the original's
`MobileNetV2Dilated` does. It returns the maps after blocks 2, 4, 7, 14 and the last block (17),
the list the original's decoders index.

Submodules are named after the PyTorch keys (`features.7.conv.3`), so a checkpoint key is the
parameter path joined with dots. NHWC; BatchNorm frozen to the checkpoint's statistics.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdissect.errors import check_choice
from ports.resnet import conv_bn, dilated_geometry

# (expansion t, output channels c, repeats n, first stride s), as in MobileNetV2.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32
RETURN_AFTER = (2, 4, 7, 14)  # blocks whose outputs are returned, before the last one

# dilate_scale -> {first block index of a dilated run: its dilation}; later blocks keep the last.
_DILATION_STARTS = {8: {7: 2, 14: 4}, 16: {14: 2}}


def relu6(x: jax.Array) -> jax.Array:
  """`min(max(x, 0), 6)`."""
  return jnp.clip(x, 0.0, 6.0)


class InvertedResidual(nn.Module):
  """Expand (1x1, unless t = 1) -> depthwise 3x3 -> project (1x1, linear), residual if shapes match.

  `use_residual` is decided from the *original* stride, as the original does after dilating.
  """

  in_ch: int
  out_ch: int
  stride: int
  expand: int
  dilation: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = round(self.in_ch * self.expand)
    s, d = dilated_geometry(self.stride, self.dilation)
    names = iter(f"conv.{i}" for i in (0, 1, 3, 4, 6, 7))
    y = x
    if self.expand != 1:
      y = conv_bn(y, hidden, 1, next(names), next(names), act=relu6)
    y = conv_bn(y, hidden, 3, next(names), next(names), stride=s, dilation=d, groups=hidden,
                act=relu6)
    y = conv_bn(y, self.out_ch, 1, next(names), next(names), act=None)
    if self.stride == 1 and self.in_ch == self.out_ch:
      return x + y
    return y


def block_table() -> list[tuple[int, int, int, int]]:
  """`(in_ch, out_ch, stride, expand)` of blocks `features.1` .. `features.17`."""
  table, in_ch = [], STEM_CHANNELS
  for t, c, n, s in SETTINGS:
    for i in range(n):
      table.append((in_ch, c, s if i == 0 else 1, t))
      in_ch = c
  return table


class MobileNetV2Dilated(nn.Module):
  """`x [B, H, W, 3] -> [f2, f4, f7, f14, f17]` (24, 32, 64, 160, 320 channels)."""

  dilate_scale: int = 8

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    check_choice("dilate_scale", self.dilate_scale, _DILATION_STARTS)
    starts = _DILATION_STARTS[self.dilate_scale]
    x = conv_bn(x, STEM_CHANNELS, 3, "features.0.0", "features.0.1", stride=2, act=relu6)
    maps, dilation = [], 1
    for i, (in_ch, out_ch, stride, expand) in enumerate(block_table(), start=1):
      dilation = starts.get(i, dilation)
      x = InvertedResidual(in_ch, out_ch, stride, expand, dilation, name=f"features.{i}")(x)
      if i in RETURN_AFTER:
        maps.append(x)
    maps.append(x)
    return maps
