"""The unified-parsing segmenter (UPerNet on a ResNet-50) that GAN Dissection labels units with.

GAN Dissection's scene results are measured with CSAIL's "unified perceptual parsing" network
(`upp-resnet50-upernet`): one model that predicts objects, their parts and materials. To reproduce
those numbers the port must compute what the original computes, so it follows netdissect's
`UnifiedParsingSegmenter` (`segmenter.py`) and `upsegmodel` exactly:

  * input: RGB in [-1, 1] -> [0, 255], channels flipped to BGR, minus (102.98, 115.95, 122.77);
  * for each size `s` in `segsizes`: the image as is if it is `s x s`, else its adaptive average
    pool to `s x s`; encoder = the non-dilated deep-stem ResNet-50 (`ports.resnet`); decoder =
    UPerNet whose pyramid pooling uses Precise RoI pooling (`prroi_pool`) over the whole map, a
    feature pyramid, a fusion conv and three heads (object and part on the fused map, material on
    the finest pyramid level); logits resized bilinearly to the output size, softmax per head,
    parts per owner object; the probabilities of all sizes summed;
  * labels (`label_fn`, the original's `segment_batch`): channel 0 the argmax object, channel 1
    the argmax material (renumbered), channel 2 the argmax part of the owner object predicted at
    the pixel; with `quad`, channels 3 and 4 split every connected object region into top/bottom
    and left/right halves of its bounding box.

Label numbering (`concepts`), with N objects and M materials besides '-', mult = 5 with quad else 1:
  0 '-'; 1..N objects; N+l, 2N+l, 3N+l, 4N+l the quad labels `{object}-t`, `-l`, `-b`, `-r`
  (category 'part'); mult*N+1 .. mult*N+M materials; then the part names that are not object
  names, numbered in first-seen order over the owners. A part that is also an object name (a
  building's 'door') takes that object's label; a part '-' means no part (label 0). Owners are
  sky, building, person (the original's choice), or with `all_parts` every owner in the order of
  `labels['object_part']`. The decoder's part logits are per owner in ascending object index; this
  port maps each owner to its own slice (the original assumes the two orders agree).

Soft output (`segment_fn`), `[B, h, w, K]` over the same labels, from the head probabilities
averaged over `segsizes` (P below):
  * object l: P(object l) + sum over owners o whose part j maps to l of P(object o) P(part j | o);
  * part-only label: the same sum over owners (the object term is absent);
  * material m: P(material m);
  * quad label `l-t` etc.: P(object l) where the hard labelling gives the pixel that quad label,
    else 0 (the split is discrete; the gradient flows through P(object l));
  * '-': 0.
Because the events "object is l" and "object is o and its part is l" exclude each other, every
entry is a probability in [0, 1] that the pixel carries the label. (The original's
`predict_single_class` adds the unweighted part probability instead.)

Params are `{"encoder": ..., "decoder": ...}`; a leaf's path joined with dots, with `kernel`,
`scale`, `bias`, `mean`, `var` read as `weight`, `weight`, `bias`, `running_mean`, `running_var`,
is its PyTorch key (see `ports.semseg`). Layout is NHWC.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Mapping, NamedTuple, Sequence

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.errors import check_shape
from jaxdissect.model import Segmenter
from ports import pth
from ports import semseg
from ports.resnet import conv, conv_bn, resnet

# The original's test-time normalisation: [0, 255] BGR minus this per-channel mean, no std.
BGR_MEAN = (102.9801, 115.9465, 122.7717)
POOL_SCALES = (1, 2, 3, 6)
PPM_CHANNELS = 512
FPN_DIM = 512
# The only owners whose parts netdissect's GAN dissection uses, in its numbering order.
DEFAULT_PART_OWNERS = ("sky", "building", "person")
QUAD_SUFFIXES = ("t", "l", "b", "r")  # label offsets N, 2N, 3N, 4N
CATEGORIES = ("object", "part", "material")  # the original's category list, in its order

ENCODER_FILE = "encoder_epoch_40.pth"
DECODER_FILE = "decoder_epoch_40.pth"
LABELS_FILE = "labels.json"

# Checkpoint keys read by nothing here (the original loads with strict=False): the scene
# classifier, an ImageNet classifier a full ResNet state dict would carry, and the BatchNorm
# buffers `ports.semseg` drops (`num_batches_tracked` and synchronized-BN extras).
IGNORED_PREFIXES = {"encoder": ("fc.",), "decoder": ("scene_head.",)}

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


# --- Label vocabulary -----------------------------------------------------------------------------

class Owner(NamedTuple):
  """An object whose parts are labelled: its object label, which of the decoder's per-owner
  part slices holds its parts, and each part's label (0 for '-')."""

  name: str
  label: int
  slice: int
  part_labels: tuple[int, ...]


class LabelSpace(NamedTuple):
  """Everything the labelling needs from `labels.json` and the options (hashable, static)."""

  num_objects: int  # N, objects besides '-'
  num_materials: int  # M, materials besides '-'
  mult: int  # 5 with quad labels, else 1
  part_slices: tuple[int, ...]  # parts per owner, in decoder order (ascending object index)
  owners: tuple[Owner, ...]  # the owners whose parts are labelled, in numbering order
  concepts: tuple[tuple[str, str], ...]

  @property
  def quad(self) -> bool:
    return self.mult == 5

  @property
  def heads(self) -> tuple[int, int, int]:
    """Output channels of the object, part and material heads."""
    return self.num_objects + 1, sum(self.part_slices), self.num_materials + 1

  @property
  def material_offset(self) -> int:
    return self.mult * self.num_objects


def read_labels(path: str) -> dict[str, Any]:
  """The `labels.json` of a unified-parsing model: `object`, `material`, `object_part`, ..."""
  with open(path, encoding="utf-8") as f:
    labels = json.load(f)
  _check_labels(labels, path)
  return labels


def _check_labels(labels: Mapping[str, Any], where: str = "labels") -> None:
  """Raises ValueError unless `labels` has the keys and structure the segmenter relies on."""
  for key in ("object", "material", "object_part"):
    if key not in labels:
      raise ValueError(f"{where} has no {key!r} entry; keys are: {', '.join(map(repr, labels))}")
  for key in ("object", "material"):
    if not labels[key] or labels[key][0] != "-":
      raise ValueError(f"{where}: {key!r} list must start with '-', got "
                       f"{list(labels[key][:3])!r}...")
  unknown = [o for o in labels["object_part"] if o not in labels["object"]]
  if unknown:
    raise ValueError(f"{where}: object_part owner(s) {', '.join(map(repr, unknown))} are not in "
                     f"the object list")


def label_space(labels: Mapping[str, Any], *, quad: bool = True,
                all_parts: bool = False) -> LabelSpace:
  """The label numbering of `labels` (see the module docstring) with or without quad labels."""
  _check_labels(labels)
  objects, materials = list(labels["object"]), list(labels["material"])
  object_part = labels["object_part"]
  n, m, mult = len(objects) - 1, len(materials) - 1, 5 if quad else 1
  index = {name: i for i, name in enumerate(objects)}
  decoder_order = sorted(object_part, key=index.__getitem__)
  used = list(object_part) if all_parts else list(DEFAULT_PART_OWNERS)
  missing = [o for o in used if o not in object_part]
  if missing:
    raise ValueError(f"part owner(s) {', '.join(map(repr, missing))} have no parts in "
                     f"labels['object_part'] (owners: {', '.join(map(repr, object_part))}); "
                     f"use all_parts=True for other label sets")
  part_numbers: dict[str, int] = {}
  first_part = mult * n + 1 + m
  owners = []
  for name in used:
    numbers = []
    for part in object_part[name]:
      if part in index:
        numbers.append(index[part])
      else:
        numbers.append(part_numbers.setdefault(part, first_part + len(part_numbers)))
    owners.append(Owner(name, index[name], decoder_order.index(name), tuple(numbers)))
  concepts = ([(o, "object") for o in objects]
              + [(f"{o}-{s}", "part") for s in (QUAD_SUFFIXES if quad else ()) for o in objects[1:]]
              + [(mat, "material") for mat in materials[1:]]
              + [(p, "part") for p in part_numbers])
  return LabelSpace(n, m, mult, tuple(len(object_part[o]) for o in decoder_order), tuple(owners),
                    tuple(concepts))


# --- Inference ------------------------------------------------------------------------------------

class Prediction(NamedTuple):
  """Per-head probabilities at the output size, summed over segsizes as the original does:
  object `[B, h, w, N + 1]`, material `[B, h, w, M + 1]`, parts per owner in decoder order."""

  object: jax.Array
  material: jax.Array
  parts: tuple[jax.Array, ...]


def normalize(images: jax.Array) -> jax.Array:
  """`[-1, 1]` RGB to the original's input: `[0, 255]`, BGR order, minus `BGR_MEAN`."""
  x = (images + 1.0) / 2.0 * 255.0
  return x[..., ::-1] - jnp.asarray(BGR_MEAN, x.dtype)


def _check_images(images: jax.Array, downsample: int) -> None:
  """Raises ValueError unless `images` is a float `[B, H, W, 3]` batch at least `downsample`."""
  check_shape("images", images.shape, (None, None, None, 3))
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images have dtype {images.dtype}, expected float in [-1, 1]")
  if min(images.shape[1:3]) < downsample:
    raise ValueError(f"images of size {list(images.shape[1:3])} are smaller than downsample "
                     f"{downsample}")


def _check_options(segsizes: Sequence[int], downsample: int) -> tuple[int, ...]:
  """`segsizes` as a tuple after checking both options are positive ints."""
  sizes = tuple(segsizes)
  if not sizes or not all(isinstance(s, (int, np.integer)) and s > 0 for s in sizes):
    raise ValueError(f"segsizes {segsizes!r} must be a non-empty sequence of positive ints")
  if not isinstance(downsample, (int, np.integer)) or downsample < 1:
    raise ValueError(f"downsample {downsample!r} must be a positive int")
  return tuple(int(s) for s in sizes)


@functools.partial(jax.jit, static_argnames=("heads", "part_slices", "out_size", "precision"))
def _predict_one(params: Any, x: jax.Array, heads: tuple[int, int, int],
                 part_slices: tuple[int, ...], out_size: tuple[int, int],
                 precision: str) -> Prediction:
  """Head probabilities of normalised, resized images `x` at `out_size` (one segsize)."""
  with jax.default_matmul_precision(precision):
    logits = network(*heads).apply({"params": params}, x)
  obj, part, mat = (semseg.resize_bilinear(t, out_size) for t in logits)
  splits = np.cumsum(part_slices)[:-1].tolist()
  return Prediction(jax.nn.softmax(obj, -1), jax.nn.softmax(mat, -1),
                    tuple(jax.nn.softmax(p, -1) for p in jnp.split(part, splits, axis=-1)))


def predict(params: Any, images: jax.Array, space: LabelSpace, *,
            segsizes: Sequence[int] = (256,), downsample: int = 2,
            precision: str = semseg.DEFAULT_PRECISION) -> Prediction:
  """The original's `raw_seg_prediction`: head probabilities summed over `segsizes`, at
  `(H // downsample, W // downsample)`, for `[B, H, W, 3]` images in [-1, 1].

  `precision` is the matmul precision of the convolutions (`ports.semseg.DEFAULT_PRECISION`:
  full float32, as the original; "default" allows TF32 on GPUs, faster but less exact).
  """
  sizes = _check_options(segsizes, downsample)
  _check_images(images, downsample)
  x = normalize(images)
  out_size = (images.shape[1] // downsample, images.shape[2] // downsample)
  total = None
  for s in sizes:  # one compiled network per input size, shared by every caller
    resized = x if x.shape[1:3] == (s, s) else semseg.adaptive_avg_pool(x, (s, s))
    pred = _predict_one(params, resized, space.heads, space.part_slices, out_size, precision)
    total = pred if total is None else jax.tree.map(jnp.add, total, pred)
  return total


def part_labels(pred: Prediction, space: LabelSpace, objects: jax.Array) -> jax.Array:
  """Channel 2: the argmax part of each owner, as a label, where `objects` is that owner."""
  out = jnp.zeros(objects.shape, jnp.int32)
  for owner in space.owners:
    probs = pred.parts[owner.slice]
    translate = jnp.asarray(owner.part_labels, jnp.int32)
    out = jnp.where(objects == owner.label, translate[jnp.argmax(probs, -1)], out)
  return out


@functools.partial(jax.jit, static_argnames=("space", "original_quad_quirk"))
def labels_from_prediction(pred: Prediction, space: LabelSpace, *,
                           original_quad_quirk: bool = False) -> jax.Array:
  """The original's `segment_batch` channels as `[B, h, w, D]` int32 (D = 5 with quad, else 3)."""
  objects = jnp.argmax(pred.object, -1).astype(jnp.int32)
  materials = jnp.argmax(pred.material, -1).astype(jnp.int32)
  materials = jnp.where(materials == 0, 0, materials + space.material_offset)
  channels = [objects, materials, part_labels(pred, space, objects)]
  if space.quad:
    quads = quad_split(objects, space.num_objects, original_quad_quirk=original_quad_quirk)
    channels += [quads[..., 0], quads[..., 1]]
  return jnp.stack(channels, -1)


@functools.partial(jax.jit, static_argnames=("space", "num_scales"))
def probabilities_from_prediction(pred: Prediction, space: LabelSpace, num_scales: int,
                                  quads: jax.Array | None = None) -> jax.Array:
  """The soft output `[B, h, w, K]` (see the module docstring); `quads` are the hard quad
  channels `[B, h, w, 2]`, needed when the space has quad labels."""
  k = len(space.concepts)
  obj = pred.object / num_scales
  n = space.num_objects
  out = jnp.zeros(obj.shape[:-1] + (k,), obj.dtype)
  out = out.at[..., 1:n + 1].set(obj[..., 1:])
  mat = pred.material[..., 1:] / num_scales
  out = out.at[..., space.material_offset + 1:space.material_offset + 1 + space.num_materials
               ].set(mat)
  for owner in space.owners:
    parts = pred.parts[owner.slice] / num_scales
    scatter = np.zeros((len(owner.part_labels), k), np.float32)
    for j, label in enumerate(owner.part_labels):
      if label:
        scatter[j, label] = 1.0
    out = out + jnp.einsum("bhwj,jk->bhwk", obj[..., owner.label:owner.label + 1] * parts,
                           scatter, precision=_HIGHEST)
  if space.quad:
    if quads is None:
      raise ValueError("a quad label space needs the hard quad channels `quads`")
    top = jnp.argmax(pred.object, -1)[..., None]
    p_object = jnp.take_along_axis(obj, top, -1)
    for c in range(2):
      out = out + jax.nn.one_hot(quads[..., c], k, dtype=obj.dtype).at[..., 0].set(0) * p_object
  return out


# --- Connected components and the quad split ------------------------------------------------------

def _neighbour_min(ids: jax.Array, labels: jax.Array, none: int) -> jax.Array:
  """Minimum of `ids` over each pixel's 8-neighbourhood (itself included) with the same label."""
  h, w = labels.shape[-2:]
  pad = ((0, 0), (1, 1), (1, 1))
  ids_p = jnp.pad(ids, pad, constant_values=none)
  lab_p = jnp.pad(labels, pad, constant_values=-1)
  out = ids
  for dy in range(3):
    for dx in range(3):
      same = lab_p[:, dy:dy + h, dx:dx + w] == labels
      out = jnp.minimum(out, jnp.where(same, ids_p[:, dy:dy + h, dx:dx + w], none))
  return out


@jax.jit
def connected_components(labels: jax.Array) -> jax.Array:
  """Component ids of `[B, h, w]` integer maps: 8-connected regions of one nonzero value.

  A pixel's id is the raster index `y * w + x` of its component's first pixel in raster order
  (so ids sort components as skimage's `label` numbers them); background (0) gets `h * w`.
  Min-label propagation with pointer jumping, in a `lax.while_loop` until nothing changes.
  """
  check_shape("label map", labels.shape, (None, None, None))
  b, h, w = labels.shape
  none = h * w
  flat = jnp.broadcast_to(jnp.arange(h * w, dtype=jnp.int32).reshape(1, h, w), labels.shape)
  ids = jnp.where(labels > 0, flat, none)

  def step(state):
    ids, _ = state
    new = _neighbour_min(ids, labels, none)
    table = jnp.concatenate([new.reshape(b, -1), jnp.full((b, 1), none, jnp.int32)], 1)
    new = jnp.take_along_axis(table, new.reshape(b, -1), 1).reshape(b, h, w)
    return new, jnp.any(new != ids)

  ids, _ = jax.lax.while_loop(lambda s: s[1], step, step((ids, True)))
  return jax.lax.stop_gradient(ids)


@functools.partial(jax.jit, static_argnames=("num_objects", "original_quad_quirk"))
def quad_split(objects: jax.Array, num_objects: int, *,
               original_quad_quirk: bool = False) -> jax.Array:
  """Channels 3 and 4 of the quad labelling of `[B, h, w]` object labels: `[B, h, w, 2]`.

  For each connected component with bounding box rows `top..bottom`, cols `left..right`:
  `vmid = (top + bottom + 1) // 2`, `hmid = (left + right + 1) // 2`; channel 3 is `l + N` above
  `vmid` ('t') else `l + 3N` ('b'); channel 4 is `l + 2N` left of `hmid` ('l') else `l + 4N`
  ('r'); background 0. Every component is split; `original_quad_quirk=True` reproduces
  netdissect, which leaves the last component (in raster order of first pixels) of each image
  unsplit (0 in both channels).
  """
  objects = objects.astype(jnp.int32)
  b, h, w = objects.shape
  ids = connected_components(objects)
  rows = jnp.broadcast_to(jnp.arange(h, dtype=jnp.int32)[None, :, None], objects.shape)
  cols = jnp.broadcast_to(jnp.arange(w, dtype=jnp.int32)[None, None, :], objects.shape)

  def per_image(ids, rows, cols):
    seg = ids.reshape(-1)
    box = [jax.ops.segment_min(rows.reshape(-1), seg, h * w + 1),
           jax.ops.segment_max(rows.reshape(-1), seg, h * w + 1),
           jax.ops.segment_min(cols.reshape(-1), seg, h * w + 1),
           jax.ops.segment_max(cols.reshape(-1), seg, h * w + 1)]
    return [v[seg].reshape(h, w) for v in box]

  top, bottom, left, right = jax.vmap(per_image)(ids, rows, cols)
  vmid, hmid = (top + bottom + 1) // 2, (left + right + 1) // 2
  n = num_objects
  ch3 = objects + jnp.where(rows < vmid, n, 3 * n)
  ch4 = objects + jnp.where(cols < hmid, 2 * n, 4 * n)
  split = objects > 0
  if original_quad_quirk:
    last = jnp.max(jnp.where(split, ids, -1), axis=(1, 2), keepdims=True)
    split &= ids != last
  return jnp.stack([jnp.where(split, ch3, 0), jnp.where(split, ch4, 0)], -1)


# --- The segmenter --------------------------------------------------------------------------------

def make_segmenter(params: Any, labels: Mapping[str, Any], *, segsizes: Sequence[int] = (256,),
                   quad: bool = True, all_parts: bool = False, downsample: int = 2,
                   original_quad_quirk: bool = False,
                   precision: str = semseg.DEFAULT_PRECISION) -> Segmenter:
  """The segmenter protocol object for converted `params` and their `labels.json` dict.

  `segment_fn(params, images)` gives the soft `[B, H/ds, W/ds, K]` label probabilities and
  `label_fn` the `[B, H/ds, W/ds, D]` int32 labels (D = 5 with `quad`, else 3) of `[B, H, W, 3]`
  images in [-1, 1]; `concepts[i]` is label i's `(name, category)`. Defaults are GAN
  Dissection's (`segsizes=[256]`, quad, parts of sky/building/person, downsample 2);
  `original_quad_quirk` leaves each image's last component without quad labels, as netdissect
  does; `precision` is the convolutions' matmul precision (see `predict`).
  """
  space = label_space(labels, quad=quad, all_parts=all_parts)
  sizes = _check_options(segsizes, downsample)
  _check_heads(params, space)

  options = {"segsizes": sizes, "downsample": downsample, "precision": precision}

  def label_fn(params: Any, images: jax.Array) -> jax.Array:
    pred = predict(params, images, space, **options)
    return labels_from_prediction(pred, space, original_quad_quirk=original_quad_quirk)

  def segment_fn(params: Any, images: jax.Array) -> jax.Array:
    pred = predict(params, images, space, **options)
    quads = None
    if quad:
      objects = jnp.argmax(pred.object, -1).astype(jnp.int32)
      quads = quad_split(objects, space.num_objects, original_quad_quirk=original_quad_quirk)
    return probabilities_from_prediction(pred, space, len(sizes), quads)

  return Segmenter(segment_fn, label_fn, jax.tree.map(jnp.asarray, params), space.concepts)


def _check_heads(params: Any, space: LabelSpace) -> None:
  """Raises ValueError if the params' head sizes disagree with the label set."""
  dec = params["decoder"]
  found = tuple(int(dec[f"{h}_head.1"]["bias"].shape[0]) for h in ("object", "part", "material"))
  if found != space.heads:
    raise ValueError(f"params have object/part/material heads of {found} classes but the labels "
                     f"describe {space.heads}")


def load(directory: str, *, encoder_file: str = ENCODER_FILE, decoder_file: str = DECODER_FILE,
         labels_file: str = LABELS_FILE, **kwargs: Any) -> Segmenter:
  """The segmenter stored in `directory` (the original's `upp-resnet50-upernet` folder).

  Reads the two `.pth` files without torch and `labels.json`; `kwargs` go to `make_segmenter`.
  """
  labels = read_labels(os.path.join(directory, labels_file))
  params = convert(pth.load_state_dict(os.path.join(directory, encoder_file)),
                   pth.load_state_dict(os.path.join(directory, decoder_file)), labels)
  return make_segmenter(params, labels, **kwargs)


# --- Checkpoint conversion ------------------------------------------------------------------------

def head_sizes(labels: Mapping[str, Any]) -> tuple[int, int, int]:
  """Output channels of the object, part and material heads for `labels` (each with '-')."""
  _check_labels(labels)
  return (len(labels["object"]), sum(len(p) for p in labels["object_part"].values()),
          len(labels["material"]))


@functools.lru_cache(maxsize=None)
def _template(heads: tuple[int, int, int]) -> Mapping[str, Any]:
  """Parameter shapes of the network with these head sizes (abstract; nothing is computed)."""
  image = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(network(*heads).init, jax.random.key(0), image)["params"]


def state_dict_shapes(labels: Mapping[str, Any]) -> dict[str, dict[str, tuple[int, ...]]]:
  """The PyTorch keys and shapes `convert` reads: `{"encoder": {key: shape}, "decoder": ...}`.

  Any other key of a checkpoint must start with an `IGNORED_PREFIXES` entry or be an unused
  BatchNorm buffer.
  """
  layout = semseg.torch_layout
  return {part: dict(layout(path, leaf.shape)
                     for path, leaf in flax.traverse_util.flatten_dict(tree).items())
          for part, tree in _template(head_sizes(labels)).items()}


def convert(encoder_sd: Mapping[str, Any], decoder_sd: Mapping[str, Any],
            labels: Mapping[str, Any]) -> dict[str, Any]:
  """Unified-parsing encoder and decoder state dicts (numpy arrays) to this port's params.

  Every parameter of the ResNet-50 encoder and of the decoder's pyramid pooling, feature pyramid,
  fusion and object/part/material heads must be present with its shape (head sizes come from
  `labels`). Ignored: keys starting with `IGNORED_PREFIXES` (`fc.` in the encoder, `scene_head.`
  in the decoder), BatchNorm `num_batches_tracked` and synchronized-BN buffers, and a leading
  `module.`. Raises ValueError naming any missing, unexpected or mis-shaped key.
  """
  template = _template(head_sizes(labels))
  convert_part = semseg.convert_part
  return {
      "encoder": convert_part(encoder_sd, template["encoder"], "UPP resnet50 encoder",
                              IGNORED_PREFIXES["encoder"]),
      "decoder": convert_part(decoder_sd, template["decoder"], "UPP upernet decoder",
                              IGNORED_PREFIXES["decoder"]),
  }
