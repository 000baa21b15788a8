"""A classifier over a dataset of images, dissected by the generator engine unchanged.

The dissection engine (`jaxdissect.dissect`, `jaxdissect.driver`) counts over rows of a source
by index: it runs a generator on row i, labels the generator's image, and later draws row i
again for the report. A classifier dissection is that with the image as the row: the adapter
`as_generator` takes an image as its latent, runs the classifier on it (edits and captures
passed through) and gives back the very image it classified as its picture, for the segmenter
to label. Resume, sharding, top images by index and the report then hold for datasets as they
do for latents, with no second implementation of the statistics.

A dataset with exact labels (a renderer's, say) carries them in `label_depth` extra channels
after the 3 colour channels, as integers stored in float32 (exact up to 2**24); the classifier
sees the colour channels only, `exact_labels_segmenter` reads the labels back, and
`on_colour_channels` makes any ordinary segmenter ignore them.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from jaxdissect.classifier import Classifier
from jaxdissect.errors import check_shape
from jaxdissect.imagefolder import ImageDataError
from jaxdissect.latents import Latents
from jaxdissect.model import Generator, Segmenter

COLOUR = 3  # colour channels of an image; label channels follow them


class ImageSet(NamedTuple):
  """A dataset to dissect a classifier over: `images`, array-like rows `[N, H, W, 3 + D]` in
  [-1, 1] (an `imagefolder.ImageFolder`, a numpy array, ...), whose D channels after the colour
  ones are exact labels of `concepts` (`(name, category)` in label order, index 0 the no-label
  entry; None when D = 0). `origin` names it for the record and in errors."""

  images: Any
  origin: str
  concepts: tuple[tuple[str, str], ...] | None = None

  @property
  def label_depth(self) -> int:
    return int(self.images.shape[-1]) - COLOUR


def as_generator(classifier: Classifier, label_depth: int = 0) -> Generator:
  """`classifier` as a Generator whose latent is an image `[H, W, 3 + label_depth]` and whose
  image is that latent: `apply_fn(params, x, edits, capture) -> (x, acts)`, where `acts` (and
  the edits) are the classifier's on `x[..., :3]`. Its logits are not returned, so under `jit`
  nothing past the captured layers is computed."""
  if label_depth < 0:
    raise ValueError(f"label_depth is {label_depth}, expected an integer >= 0")
  h, w, c = classifier.image_shape
  shape = (h, w, c + label_depth)

  def apply_fn(params, x, edits=None, capture=None):
    x = jnp.asarray(x)
    if x.ndim == 2:  # flat latents [B, zdim], as the generator protocol allows
      x = x.reshape(x.shape[0], *shape)
    check_shape("images", x.shape, (None, *shape))
    _, acts = classifier.apply_fn(params, x[..., :c], edits, capture)
    return x, acts

  return Generator(apply_fn, classifier.params, classifier.layers, shape)


def _check_concepts(concepts: Sequence[Sequence[str]]) -> tuple[tuple[str, str], ...]:
  out = tuple(tuple(c) for c in concepts)
  if len(out) < 2 or not all(len(c) == 2 and all(isinstance(s, str) for s in c) for c in out):
    raise ValueError(f"concepts {list(concepts)!r} are invalid; expected (name, category) string "
                     "pairs in label order, index 0 the no-label entry ('-', 'none')")
  return out


def exact_labels_segmenter(concepts: Sequence[Sequence[str]], label_depth: int) -> Segmenter:
  """A Segmenter reading images' label channels: labels `[B, H, W, D]` int32 are channels
  `3 .. 3 + D` rounded; probabilities are 1 for each concept a pixel carries, else 0."""
  concepts = _check_concepts(concepts)
  if label_depth < 1:
    raise ValueError(f"label_depth is {label_depth}; exact labels need at least one channel")
  depth = COLOUR + label_depth

  def label_fn(params, images):  # pylint: disable=unused-argument
    images = jnp.asarray(images)
    check_shape("images with label channels", images.shape, (None, None, None, depth))
    return jnp.round(images[..., COLOUR:]).astype(jnp.int32)

  def segment_fn(params, images):
    labels = label_fn(params, images)
    onehot = jax.nn.one_hot(labels, len(concepts), dtype=jnp.float32)  # [B, H, W, D, K]
    return jnp.max(onehot, axis=3)

  return Segmenter(segment_fn, label_fn, {}, concepts)


def on_colour_channels(seg: Segmenter) -> Segmenter:
  """`seg` labelling images by their colour channels alone (label channels, if any, dropped)."""

  def colour(images):
    return jnp.asarray(images)[..., :COLOUR]

  segment_fn = None if seg.segment_fn is None else (
      lambda params, images: seg.segment_fn(params, colour(images)))
  return seg._replace(segment_fn=segment_fn,
                      label_fn=lambda params, images: seg.label_fn(params, colour(images)))


def source(classifier: Classifier, image_set: ImageSet, segmenter: Segmenter | None = None
           ) -> tuple[Generator, Segmenter, Latents]:
  """What the engine dissects `classifier` over `image_set` with: the adapted generator, the
  segmenter (`segmenter` on the colour channels, or the set's exact labels when None) and the
  rows as latents (`dissect.Config(latents=...)`).

  Raises ImageDataError when the images are not the classifier's size or have no labels to
  fall back on.
  """
  shape = tuple(int(s) for s in image_set.images.shape[1:])
  h, w, c = classifier.image_shape
  if len(shape) != 3 or shape[:2] != (h, w) or shape[2] < c:
    raise ImageDataError(f"images of {image_set.origin} are {'x'.join(map(str, shape))} "
                         f"(HxWxC); the classifier takes {h}x{w}x{c}")
  depth = shape[2] - c
  if segmenter is not None:
    seg = on_colour_channels(segmenter)
  elif image_set.concepts is None or not depth:
    raise ImageDataError(f"images of {image_set.origin} carry no labels; give a segmenter to "
                         "label them")
  else:
    seg = exact_labels_segmenter(image_set.concepts, depth)
  latents = Latents(array=image_set.images, origin=image_set.origin)
  return as_generator(classifier, depth), seg, latents
