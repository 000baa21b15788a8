"""torchvision's VGG-16 as a jaxdissect classifier: the network whose units the PNAS paper dissects.

"Understanding the role of individual units" dissects and ablates a VGG-16 trained on Places365
(conv5_3 for class ablation). This port computes what `torchvision.models.vgg16` computes in eval
mode: thirteen 3x3 convs with ReLU and five 2x2 max pools, `AdaptiveAvgPool2d((7, 7))` (with
torch's bins, so any input of at least 32x32 works; at 224x224 it is the identity), then
fc6 -> ReLU -> fc7 -> ReLU -> fc8 (dropout is the identity at inference).

Layers are the research names `conv1_1` .. `conv5_3`, `fc6`, `fc7` (after the ReLU; the pools are
not layers). Checkpoints may use torchvision's keys (`features.28.weight`, `classifier.6.weight`)
or the named keys of davidbau/dissect's `oldvgg16.py` (`features.conv5_3.weight`,
`classifier.fc6.weight`, `classifier.fc8a.weight`), with or without a `module.` prefix or a
`{'state_dict': ...}` wrapper. Channel widths and the class count are read from the checkpoint
(365 for Places365, 1000 for ImageNet), so narrower VGG-16s load too. Params are named after
torchvision's keys; fully connected layers are VALID convs (see `ports.classifiers`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import numpy as np

from jaxdissect.classifier import Classifier
from jaxdissect.model import Edit
from ports import classifiers, pth, semseg
from ports.resnet import conv

# torchvision's configuration "D": conv widths, "M" = 2x2 max pool.
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
HIDDEN = 4096
POOLED = 7  # AdaptiveAvgPool2d((7, 7)) before the classifier


class _Conv(NamedTuple):
  name: str  # conv1_1 ...
  index: int  # its index in torchvision's `features`
  pool: bool  # a max pool follows its ReLU


def _convs() -> tuple[_Conv, ...]:
  """The 13 convs of `_CFG` with their research names and `features` indices (torchvision's
  `features` holds a conv and its ReLU per width, one MaxPool2d per "M")."""
  convs, index, block, within = [], 0, 1, 0
  for item in _CFG:
    if item == "M":
      convs[-1] = convs[-1]._replace(pool=True)
      index, block, within = index + 1, block + 1, 0
    else:
      within += 1
      convs.append(_Conv(f"conv{block}_{within}", index, False))
      index += 2
  return tuple(convs)


CONVS = _convs()
WIDTHS = tuple(w for w in _CFG if w != "M")
# (research name, torchvision `classifier` index) of the fully connected layers.
FCS = (("fc6", 0), ("fc7", 3), ("fc8", 6))
LAYERS = tuple(c.name for c in CONVS) + ("fc6", "fc7")

# davidbau/dissect's names -> torchvision's (`fc8a` is its 365-way Places layer).
_NAMED_KEYS = {**{f"features.{c.name}": f"features.{c.index}" for c in CONVS},
               **{f"classifier.{n}": f"classifier.{i}" for n, i in FCS},
               "classifier.fc8a": "classifier.6"}


class VGG16(nn.Module):
  """`x [B, H, W, 3]` (normalised) -> `(logits [B, N], acts)`; edits and captures at `LAYERS`."""

  widths: tuple[int, ...] = WIDTHS
  hidden: tuple[int, int] = (HIDDEN, HIDDEN)
  num_classes: int = 1000

  @nn.compact
  def __call__(self, x: jax.Array, edits: Mapping[str, Edit], capture: Sequence[str]
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    acts: dict[str, jax.Array] = {}
    for c, width in zip(CONVS, self.widths):
      x = jax.nn.relu(conv(width, 3, bias=True, name=f"features.{c.index}")(x))
      x = classifiers.tap(x, c.name, edits, capture, acts)
      if c.pool:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = semseg.adaptive_avg_pool(x, (POOLED, POOLED))
    for (name, index), (features, window) in zip(FCS, self._fc_shapes()):
      x = classifiers.dense(features, window, f"classifier.{index}")(x)
      if name != "fc8":
        x = classifiers.tap(jax.nn.relu(x), name, edits, capture, acts)
    return x[:, 0, 0, :], acts

  def _fc_shapes(self) -> tuple[tuple[int, int], ...]:
    """(outputs, input window) of fc6, fc7, fc8."""
    return (self.hidden[0], POOLED), (self.hidden[1], 1), (self.num_classes, 1)


def torchvision_keys(sd: Mapping[str, Any]) -> dict[str, Any]:
  """`sd` with torchvision's keys: `module.` dropped, dissect's named layers renumbered."""
  out = {}
  for key, value in classifiers.strip_prefix(sd).items():
    module, dot, field = key.rpartition(".")
    out[_NAMED_KEYS.get(module, module) + dot + field if dot else key] = value
  return out


def network(sd: Mapping[str, Any]) -> VGG16:
  """The VGG16 module whose widths and class count a torchvision-keyed `sd` has."""
  weights = [f"features.{c.index}.weight" for c in CONVS] + [
      f"classifier.{i}.weight" for _, i in FCS]
  classifiers.require(sd, weights, "VGG-16", hint=" (or dissect's named keys such as "
                      "'features.conv1_1.weight', 'classifier.fc8a.weight')")
  widths = tuple(_rows(sd[w]) for w in weights[:len(CONVS)])
  fc6, fc7 = (_rows(sd[w]) for w in weights[len(CONVS):-1])
  classes = classifiers.num_outputs(sd, weights[-1], "VGG-16")
  return VGG16(widths, (fc6, fc7), classes)


def _rows(weight: Any) -> int:
  """Output channels of a torch weight (0 for a scalar, which the shape checks then report)."""
  shape = np.shape(weight)
  return int(shape[0]) if shape else 0


def convert(sd: Mapping[str, Any]) -> tuple[VGG16, dict[str, Any]]:
  """The module and params of a VGG-16 state dict (numpy arrays) in any accepted layout.

  Raises `ClassifierWeightsError` naming missing, unexpected or misshapen keys.
  """
  sd = torchvision_keys(sd)
  module = network(sd)
  linear = [f"classifier.{i}.weight" for _, i in FCS]
  return module, classifiers.convert(sd, module, "VGG-16", linear)


def from_state_dict(sd: Mapping[str, Any], classes: str | os.PathLike | Sequence[str] | None = None,
                    *, image_size: int | Sequence[int] = 224,
                    precision: str = classifiers.DEFAULT_PRECISION) -> Classifier:
  """The classifier of a VGG-16 state dict; `classes` as for `load_vgg16`."""
  module, params = convert(sd)
  names = classifiers.class_names(classes, module.num_classes)
  return classifiers.make_classifier(module, params, LAYERS, names, image_size, precision)


def load_vgg16(path: str | os.PathLike, classes: str | os.PathLike | Sequence[str] | None = None,
               *, image_size: int | Sequence[int] = 224,
               precision: str = classifiers.DEFAULT_PRECISION) -> Classifier:
  """A VGG-16 classifier from a `.pth` file (torchvision or Places365 layout), read without torch.

  `classes`: a names file (one a line, or `categories_places365.txt`), a list of names, or None
  for "0", "1", ...; `image_size` the input size `apply_fn` accepts (any >= 32). Raises
  `ports.pth.PthError` for an unreadable file, `ClassifierWeightsError` for wrong weights and
  `ClassNamesError` for bad class names.
  """
  return from_state_dict(pth.load_state_dict(path), classes, image_size=image_size,
                         precision=precision)

