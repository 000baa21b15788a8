"""Inference of the unified-parsing segmenter: head probabilities, hard labels and soft labels.

`predict` is the original's `raw_seg_prediction`; `labels_from_prediction` its `segment_batch`
(the hard label channels) and `probabilities_from_prediction` this port's soft output.

Soft output (`segment_fn`), `[B, h, w, K]` over the labels of `ports.upp_labels`, from the head
probabilities averaged over `segsizes` (P below):
  * object l: P(object l) + sum over owners o whose part j maps to l of P(object o) P(part j | o);
  * part-only label: the same sum over owners (the object term is absent);
  * material m: P(material m);
  * quad label `l-t` etc.: P(object l) where the hard labelling gives the pixel that quad label,
    else 0 (the split is discrete; the gradient flows through P(object l));
  * '-': 0.
Because the events "object is l" and "object is o and its part is l" exclude each other, every
entry is a probability in [0, 1] that the pixel carries the label. (The original's
`predict_single_class` adds the unweighted part probability instead.)
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.errors import check_shape
from ports import semseg
from ports.upp_labels import LabelSpace
from ports.upp_net import network
from ports.upp_quad import quad_split

# The original's test-time normalisation: [0, 255] BGR minus this per-channel mean, no std.
BGR_MEAN = (102.9801, 115.9465, 122.7717)

_HIGHEST = jax.lax.Precision.HIGHEST


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


def check_options(segsizes: Sequence[int], downsample: int) -> tuple[int, ...]:
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
  sizes = check_options(segsizes, downsample)
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
