"""The classifier protocol: the other half of unit dissection (PNAS §"units of a classifier").

A classifier is dissected over a dataset of images, not over latents, and intervened on to see
what its units do for each class. It talks to the rest of jaxdissect through the same conventions
as a generator: `apply_fn(params, images, edits=None, capture=None) -> (logits, acts)`, with
`Edit`s as data and `acts` captured after each layer's nonlinearity and before its edit, so
ablation sweeps `vmap` over edits exactly as the generator's causal experiments do.

Images are `[B, H, W, 3]` floats in `[-1, 1]` (the range generators produce and segmenters take),
so one batch can be both classified and segmented; a port that expects another normalisation
(ImageNet mean and std, say) converts inside its `apply_fn`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdissect.errors import check_shape
from jaxdissect.model import ApplyFn


class Classifier(NamedTuple):
  """A classifier: `apply_fn(params, images, edits=None, capture=None) -> (logits [B, N], acts)`.

  `layers` is the ordered tuple of layer names that can be captured and edited (`[B, H, W, C]`
  activations; a fully connected layer is `[B, 1, 1, C]`), `classes` the names of the N logits,
  `image_shape` the `(H, W, 3)` of the images it takes.
  """

  apply_fn: ApplyFn
  params: Any
  layers: tuple[str, ...]
  classes: tuple[str, ...]
  image_shape: tuple[int, int, int]


def check_images(images: Any, image_shape: tuple[int, ...]) -> jax.Array:
  """`images` as an array after checking it is a float `[B, *image_shape]` batch."""
  images = jnp.asarray(images)
  check_shape("images", images.shape, (None, *image_shape))
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images have dtype {images.dtype} (shape {list(images.shape)}), expected "
                     f"floats in [-1, 1] of shape [?, {', '.join(map(str, image_shape))}]")
  return images
