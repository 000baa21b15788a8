"""What the ports of torchvision classifiers (`ports.vgg`, `ports.resnet_classifier`) share.

The PNAS half of unit dissection studies scene classifiers (VGG-16 and ResNets trained on
Places365) and ImageNet ones. Their checkpoints all come in torchvision's key layout, sometimes
behind DataParallel's `module.` prefix or a `{'state_dict': ...}` wrapper, so the ports share:
the protocol wrapper around a Flax module (input normalisation, checks, precision), the taps where
layers are captured and edited, the key conversion with its named error, and reading class names.

Fully connected layers are computed as convolutions of `[B, h, w, C]` maps into `[B, 1, 1, N]`
(a torch `Linear` weight `[N, C*h*w]` is exactly the `[N, C, h, w]` kernel of a VALID conv over
the NCHW-flattened input), so they are captured and edited as `[B, 1, 1, N]` activations, and
their checkpoint weights go through the same converter as conv weights.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import smallfile
from jaxdissect.classifier import Classifier, check_images
from jaxdissect.model import Edit, apply_edit, check_edits, check_layers
from ports import semseg

DEFAULT_PRECISION = semseg.DEFAULT_PRECISION
MIN_IMAGE_SIZE = 32  # five stride-2 stages leave a 1x1 map
MODULE_PREFIX = "module."

# "/a/abbey 0": Places365's categories_places365.txt (the name after the one-letter folder).
_INDEXED_LINE = re.compile(r"(\S+)\s+(\d+)\Z")
_LETTER_FOLDER = re.compile(r"/[^/]/")
MAX_CLASS_NAMES_BYTES = 16 << 20  # Places365's list is 6 kB; refused unread beyond this


class ClassifierWeightsError(ValueError):
  """A state dict that does not fit the architecture; names the missing, extra or misshapen keys."""


class ClassNamesError(ValueError):
  """A class-name file or list that cannot be read or does not fit the logits; one line."""


# --- Layers ---------------------------------------------------------------------------------------

def tap(x: jax.Array, name: str, edits: Mapping[str, Edit], capture: Sequence[str],
        acts: dict[str, jax.Array]) -> jax.Array:
  """Records `x` in `acts` if `name` is captured (before the edit), then applies its edit."""
  if name in capture:
    acts[name] = x
  return apply_edit(x, edits.get(name), name)


def dense(features: int, window: int, name: str) -> nn.Conv:
  """A torch `Linear` over a `window x window` map, as a VALID conv with bias (`[B, 1, 1, N]`)."""
  return nn.Conv(features, (window, window), padding="VALID", name=name)


# --- The protocol object --------------------------------------------------------------------------

def image_shape(image_size: int | Sequence[int]) -> tuple[int, int, int]:
  """`(H, W, 3)` from a size or an (H, W) pair; raises ValueError below `MIN_IMAGE_SIZE`."""
  size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else image_size
  size = tuple(size)
  if len(size) != 2 or not all(
      isinstance(s, (int, np.integer)) and s >= MIN_IMAGE_SIZE for s in size):
    raise ValueError(f"image_size {image_size!r} is not a size or (height, width) pair of ints "
                     f">= {MIN_IMAGE_SIZE}")
  return int(size[0]), int(size[1]), 3


def normalize(images: jax.Array) -> jax.Array:
  """`[-1, 1]` RGB to torchvision's input: `[0, 1]`, minus ImageNet mean, over ImageNet std."""
  return semseg.normalize(images)


def make_classifier(module: nn.Module, params: Any, layers: tuple[str, ...],
                    classes: tuple[str, ...], image_size: int | Sequence[int],
                    precision: str = DEFAULT_PRECISION) -> Classifier:
  """The protocol object of `module(x, edits, capture) -> (logits, acts)` on normalised images.

  `precision` is the matmul precision of the convolutions ("highest": float32, as torch on CPU).
  """
  shape = image_shape(image_size)

  def apply_fn(params: Any, images: jax.Array, edits: Mapping[str, Edit] | None = None,
               capture: Sequence[str] | str | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`images [B, H, W, 3]` in [-1, 1] -> `(logits [B, N], acts)`."""
    images = check_images(images, shape)
    edits, names = check_edits(edits, layers), check_layers(capture, layers)
    with jax.default_matmul_precision(precision):
      return module.apply({"params": params}, normalize(images), edits, names)

  return Classifier(apply_fn, jax.tree.map(jnp.asarray, params), layers, classes, shape)


# --- Checkpoints ----------------------------------------------------------------------------------

def strip_prefix(sd: Mapping[str, Any]) -> dict[str, Any]:
  """The state dict without DataParallel's `module.` key prefix (Places365's releases have it)."""
  return {key.removeprefix(MODULE_PREFIX): value for key, value in sd.items()}


def require(sd: Mapping[str, Any], keys: Sequence[str], what: str, hint: str = "") -> None:
  """Raises ClassifierWeightsError listing those of `keys` that `sd` lacks."""
  missing = [k for k in keys if k not in sd]
  if missing:
    listing = semseg._listing  # pylint: disable=protected-access  (one format for key lists)
    raise ClassifierWeightsError(f"{what} state dict is missing key(s) {listing(missing)}{hint}; "
                                 f"it has {listing(sorted(sd))}")


def convert(sd: Mapping[str, Any], module: nn.Module, what: str, linear: Sequence[str] = ()
            ) -> dict[str, Any]:
  """Torch-named `sd` to `module`'s params, every key and shape checked against its template.

  `linear` names the torch `Linear` weights (`[N, C*h*w]`) of layers the module computes as
  VALID convs over `h x w` maps; they are reshaped to the conv's `[N, C, h, w]`. Missing keys are
  reported first, then unexpected ones, then wrong shapes (ClassifierWeightsError).
  """
  image = jax.ShapeDtypeStruct((1, MIN_IMAGE_SIZE, MIN_IMAGE_SIZE, 3), jnp.float32)
  template = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, {}, ()), image)["params"]
  layout = dict(semseg.torch_layout(path, leaf.shape)
                for path, leaf in flax.traverse_util.flatten_dict(template).items())
  require(sd, sorted(set(layout) - set(sd)), what)
  sd = dict(sd)
  for key in linear:
    n, c, h, w = layout[key]
    value = np.asarray(sd[key])
    if value.shape != (n, c * h * w):
      raise ClassifierWeightsError(f"{what} {key!r} has shape {list(value.shape)}, expected "
                                   f"{[n, c * h * w]} (a Linear over {c}x{h}x{w} inputs)")
    sd[key] = value.reshape(n, c, h, w)
  try:
    return semseg.convert_part(sd, template, what)
  except ValueError as e:
    raise ClassifierWeightsError(str(e)) from e


def num_outputs(sd: Mapping[str, Any], key: str, what: str) -> int:
  """Rows of the last layer's weight `sd[key]`: the number of classes."""
  require(sd, [key], what)
  shape = np.shape(sd[key])
  if len(shape) != 2 or shape[0] < 1:
    raise ClassifierWeightsError(f"{what} {key!r} has shape {list(shape)}, expected a Linear "
                                 "weight [classes, features]")
  return int(shape[0])


# --- Class names ----------------------------------------------------------------------------------

def class_names(classes: str | os.PathLike | Sequence[str] | None, count: int
                ) -> tuple[str, ...]:
  """`count` names: `classes` read from a file, given as a list, or (None) "0" .. "count - 1"."""
  if classes is None:
    return tuple(str(i) for i in range(count))
  if isinstance(classes, (str, os.PathLike)):
    names, where = read_class_names(classes), os.fspath(classes)
  else:
    names, where = tuple(classes), "the class list"
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
      raise ClassNamesError(f"the class list has {bad[0]!r}, not a nonempty name")
  if len(names) != count:
    raise ClassNamesError(f"{where}: {len(names)} class names, but the checkpoint's last layer "
                          f"has {count} outputs")
  return names


def read_class_names(path: str | os.PathLike) -> tuple[str, ...]:
  """Class names from a text file: one name a line, or Places365's `/a/abbey 0` lines.

  In the indexed form (recognised by its first line) every line is `PATH INDEX`, the indices are
  0 .. N-1 once each, and a name is its path without the leading one-letter folder
  (`/a/apartment_building/outdoor` -> `apartment_building/outdoor`, as the Places365 demo code
  reads it). Trailing blank lines are ignored; others are errors. Raises ClassNamesError, also
  for a file over MAX_CLASS_NAMES_BYTES (refused before it is read).
  """
  path = os.fspath(path)
  try:
    data = smallfile.read_bytes(path, MAX_CLASS_NAMES_BYTES, "class-name file")
    lines = [line.strip() for line in data.decode("utf-8").splitlines()]
  except (OSError, UnicodeDecodeError, smallfile.FileTooLarge) as e:
    raise ClassNamesError(f"{path}: cannot read class names ({type(e).__name__}: "
                          f"{smallfile.one_line(e, 80)})") from e
  while lines and not lines[-1]:
    lines.pop()
  if not lines:
    raise ClassNamesError(f"{path}: no class names (the file is empty)")
  if "" in lines:
    raise ClassNamesError(f"{path}: line {lines.index('') + 1} is blank; expected one class name "
                          "a line, or 'NAME INDEX' lines as in categories_places365.txt")
  if not _INDEXED_LINE.match(lines[0]):
    return tuple(lines)
  return _indexed_names(path, lines)


def _indexed_names(path: str, lines: list[str]) -> tuple[str, ...]:
  """The names of `/a/abbey 0` lines, in index order."""
  names: dict[int, str] = {}
  for number, line in enumerate(lines, start=1):
    m = _INDEXED_LINE.match(line)
    if m is None:
      raise ClassNamesError(f"{path}: line {number} {smallfile.one_line(line, 80)!r} is not 'NAME INDEX' like "
                            f"line 1 {smallfile.one_line(lines[0], 80)!r}")
    digits = m.group(2)
    index = int(digits) if len(digits) <= 9 else len(lines)  # longer is out of range anyway
    if index >= len(lines) or index in names:
      raise ClassNamesError(f"{path}: line {number} has index {smallfile.one_line(digits, 80)}; the "
                            f"{len(lines)} lines must number the classes 0 .. {len(lines) - 1} "
                            "once each")
    name = m.group(1)
    folder = _LETTER_FOLDER.match(name)
    names[index] = name[folder.end():] if folder and folder.end() < len(name) else name
  return tuple(names[i] for i in range(len(lines)))
