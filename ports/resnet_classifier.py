"""torchvision's ResNets (18, 50, 101) as jaxdissect classifiers, e.g. the Places365 releases.

Scene and object classifiers other than VGG are dissected the same way; CSAIL's Places365
ResNet-18 and ResNet-50 (`resnet18_places365.pth.tar`, `{'state_dict': {'module.conv1.weight',
...}}`) and torchvision's ImageNet weights are all `torchvision.models.resnet*` state dicts. The
network, in eval mode: 7x7 stride-2 conv, BatchNorm, ReLU, 3x3 stride-2 max pool, the four stages
(the blocks of `ports.resnet`, stride on the 3x3 conv as torchvision has it), global average pool
and the `fc` layer (a 1x1 conv here; see `ports.classifiers`).

Layers: `conv1` (the stem after its ReLU, before the max pool) and `layer1` .. `layer4` (each
stage's output, after its last block's ReLU). The class count comes from `fc.weight`.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdissect.classifier import Classifier
from jaxdissect.errors import check_choice
from jaxdissect.model import Edit
from ports import classifiers, pth
from ports.resnet import DEPTHS, conv, conv_bn, stage

LAYERS = ("conv1", "layer1", "layer2", "layer3", "layer4")
STEM_CHANNELS = 64


class ResNetClassifier(nn.Module):
  """`x [B, H, W, 3]` (normalised) -> `(logits [B, N], acts)`; edits and captures at `LAYERS`."""

  depth: int = 50
  num_classes: int = 1000

  @nn.compact
  def __call__(self, x: jax.Array, edits: Mapping[str, Edit], capture: Sequence[str]
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    check_choice("ResNet depth", self.depth, DEPTHS)
    block, stages = DEPTHS[self.depth]
    acts: dict[str, jax.Array] = {}
    x = conv_bn(x, STEM_CHANNELS, 7, "conv1", "bn1", stride=2)
    x = classifiers.tap(x, "conv1", edits, capture, acts)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for index, blocks in enumerate(stages, start=1):
      x = classifiers.tap(stage(x, block, index, blocks), f"layer{index}", edits, capture, acts)
    x = jnp.mean(x, axis=(1, 2), keepdims=True)
    return conv(self.num_classes, 1, bias=True, name="fc")(x)[:, 0, 0, :], acts


def convert(sd: Mapping[str, Any], depth: int) -> tuple[ResNetClassifier, dict[str, Any]]:
  """The module and params of a torchvision ResNet-`depth` state dict (numpy arrays).

  Accepts a `module.` prefix; drops `num_batches_tracked`. Raises `ClassifierWeightsError`
  naming missing, unexpected or misshapen keys (a ResNet-50 file read as a ResNet-18, say).
  """
  check_choice("ResNet depth", depth, DEPTHS)
  what = f"ResNet-{depth}"
  sd = classifiers.strip_prefix(sd)
  module = ResNetClassifier(depth, classifiers.num_outputs(sd, "fc.weight", what))
  return module, classifiers.convert(sd, module, what, ["fc.weight"])


def from_state_dict(sd: Mapping[str, Any], depth: int,
                    classes: str | os.PathLike | Sequence[str] | None = None, *,
                    image_size: int | Sequence[int] = 224,
                    precision: str = classifiers.DEFAULT_PRECISION) -> Classifier:
  """The classifier of a ResNet state dict; arguments as for `load_resnet`."""
  module, params = convert(sd, depth)
  names = classifiers.class_names(classes, module.num_classes)
  return classifiers.make_classifier(module, params, LAYERS, names, image_size, precision)


def load_resnet(path: str | os.PathLike, depth: int,
                classes: str | os.PathLike | Sequence[str] | None = None, *,
                image_size: int | Sequence[int] = 224,
                precision: str = classifiers.DEFAULT_PRECISION) -> Classifier:
  """A ResNet-`depth` (18, 50 or 101) classifier from a `.pth` file, read without torch.

  `classes`: a names file (one a line, or `categories_places365.txt`), a list of names, or None
  for "0", "1", ...; `image_size` the input size `apply_fn` accepts (any >= 32). Raises
  `ports.pth.PthError` for an unreadable file, `ClassifierWeightsError` for wrong weights and
  `ClassNamesError` for bad class names.
  """
  return from_state_dict(pth.load_state_dict(path), depth, classes, image_size=image_size,
                         precision=precision)
