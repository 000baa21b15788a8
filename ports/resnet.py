"""Deep-stem ResNet encoders of the CSAIL ADE20K segmenters, and the layers they share.

The CSAIL scene-parsing models (`semantic-segmentation-pytorch`) are the segmenters GAN Dissection
measures units with, so their encoders must compute what the originals compute. Their ResNets
differ from torchvision's: a three-convolution stem (3x3 convs 3->64 stride 2, 64->64, 64->128),
stride on the 3x3 conv of a bottleneck, and, for the "dilated" variants, layers 3 and 4 turned
into stride-1 layers with dilated 3x3 convolutions so the output stride is 8 (or 16), not 32.

Submodules are named after the PyTorch state-dict keys (`layer3.0.downsample.1`), so a checkpoint
key is its parameter path joined with dots; `ports.semseg` relies on that to convert weights.
`conv`, `FrozenBatchNorm` and `conv_bn` are also used by `ports.mobilenet` and `ports.semseg`;
the blocks and `stage` by `ports.resnet_classifier` (torchvision's ResNets share them).
Layout is NHWC; BatchNorm always uses the checkpoint's running statistics (inference only).
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax

from jaxdissect.errors import check_choice

BN_EPS = 1e-5

# depth -> (block kind, blocks per layer), as in the original's constructors.
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}

# dilate_scale -> dilation of layer1..layer4 (1 = the layer keeps its stride).
_STAGE_DILATIONS = {None: (1, 1, 1, 1), 16: (1, 1, 1, 2), 8: (1, 1, 2, 4)}

_PLANES = (64, 128, 256, 512)
_EXPANSION = {"basic": 1, "bottleneck": 4}


class FrozenBatchNorm(nn.Module):
  """BatchNorm2d in eval mode: `(x - mean) / sqrt(var + 1e-5) * scale + bias` over channels."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    mean = self.param("mean", nn.initializers.zeros, (c,))
    var = self.param("var", nn.initializers.ones, (c,))
    return (x - mean) * (scale * jax.lax.rsqrt(var + BN_EPS)) + bias


def conv(features: int, kernel: int, *, stride: int = 1, dilation: int = 1, groups: int = 1,
         bias: bool = False, name: str) -> nn.Conv:
  """A PyTorch-style square conv: zero padding `dilation * (kernel // 2)` on every side.

  That is the padding of every conv in these networks, before and after dilation (the original
  sets padding = dilation when it dilates a 3x3 conv), so output sizes follow PyTorch's floor rule.
  """
  pad = dilation * (kernel // 2)
  return nn.Conv(features, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                 kernel_dilation=dilation, feature_group_count=groups, use_bias=bias, name=name)


def conv_bn(x: jax.Array, features: int, kernel: int, conv_name: str, bn_name: str, *,
            stride: int = 1, dilation: int = 1, groups: int = 1,
            act: Callable[[jax.Array], jax.Array] | None = jax.nn.relu) -> jax.Array:
  """Conv (no bias) -> frozen BatchNorm -> `act` (None for no activation).

  Call it only inside a compact method: the submodules belong to the calling module.
  """
  x = conv(features, kernel, stride=stride, dilation=dilation, groups=groups, name=conv_name)(x)
  x = FrozenBatchNorm(name=bn_name)(x)
  return x if act is None else act(x)


def dilated_geometry(stride: int, dilation: int) -> tuple[int, int]:
  """`(stride, dilation)` of a 3x3 conv with original `stride` in a stage dilated by `dilation`.

  The original turns a strided conv into a stride-1 conv with dilation `dilation // 2` and
  dilates every other 3x3 conv by `dilation`; `dilation == 1` leaves the conv as it was.
  """
  if dilation == 1:
    return stride, 1
  return 1, dilation // 2 if stride == 2 else dilation


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN pairs plus a (projected) shortcut; ResNet-18's block."""

  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s, d = dilated_geometry(self.stride, self.dilation)
    out = conv_bn(x, self.planes, 3, "conv1", "bn1", stride=s, dilation=d)
    _, d = dilated_geometry(1, self.dilation)
    out = conv_bn(out, self.planes, 3, "conv2", "bn2", dilation=d, act=None)
    return jax.nn.relu(out + _shortcut(x, self.planes, self.stride, self.dilation, self.downsample))


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, plus a (projected) shortcut."""

  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out = conv_bn(x, self.planes, 1, "conv1", "bn1")
    s, d = dilated_geometry(self.stride, self.dilation)
    out = conv_bn(out, self.planes, 3, "conv2", "bn2", stride=s, dilation=d)
    out = conv_bn(out, self.planes * 4, 1, "conv3", "bn3", act=None)
    return jax.nn.relu(out + _shortcut(x, self.planes * 4, self.stride, self.dilation,
                                       self.downsample))


def _shortcut(x: jax.Array, features: int, stride: int, dilation: int, project: bool) -> jax.Array:
  """Identity, or the `downsample` 1x1 conv + BN (stride dropped when the stage is dilated)."""
  if not project:
    return x
  s = stride if dilation == 1 else 1
  return conv_bn(x, features, 1, "downsample.0", "downsample.1", stride=s, act=None)


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
  """The CSAIL deep-stem ResNet: `x [B, H, W, 3] -> [layer1, layer2, layer3, layer4]` maps.

  `dilate_scale` None keeps output stride 32; 16 dilates layer4; 8 dilates layers 3 and 4.
  """

  block: str
  layers: tuple[int, int, int, int]
  dilate_scale: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    check_choice("block", self.block, _BLOCKS)
    check_choice("dilate_scale", self.dilate_scale, _STAGE_DILATIONS)
    x = conv_bn(x, 64, 3, "conv1", "bn1", stride=2)
    x = conv_bn(x, 64, 3, "conv2", "bn2")
    x = conv_bn(x, 128, 3, "conv3", "bn3")
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    maps = []
    dilations = _STAGE_DILATIONS[self.dilate_scale]
    for i, (blocks, dilation) in enumerate(zip(self.layers, dilations)):
      x = stage(x, self.block, i + 1, blocks, dilation)
      maps.append(x)
    return maps


def stage(x: jax.Array, block: str, index: int, blocks: int, dilation: int = 1) -> jax.Array:
  """`layer{index}` (1-4) of `blocks` blocks of kind `block` ("basic" or "bottleneck").

  The first block takes the stride (2 except layer1) and, when the shape changes, the projected
  shortcut. torchvision's ResNets have the same stages; call it only inside a compact method
  (the blocks belong to the calling module).
  """
  check_choice("block", block, _BLOCKS)
  planes, stride = _PLANES[index - 1], 1 if index == 1 else 2
  make = _BLOCKS[block]
  project = stride != 1 or x.shape[-1] != planes * _EXPANSION[block]
  x = make(planes, stride, dilation, project, name=f"layer{index}.0")(x)
  for b in range(1, blocks):
    x = make(planes, 1, dilation, name=f"layer{index}.{b}")(x)
  return x


def resnet(depth: int, *, dilate_scale: int | None = None) -> ResNet:
  """The CSAIL ResNet-`depth` encoder (18, 50 or 101), optionally dilated (8 or 16)."""
  check_choice("ResNet depth", depth, DEPTHS)
  block, layers = DEPTHS[depth]
  return ResNet(block, layers, dilate_scale)

