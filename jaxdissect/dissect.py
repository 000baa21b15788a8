"""Straightforward two-pass dissection of one layer: the reference every faster path must match.

Pass 1 streams the unit's activations, upsampled to segmentation resolution, into a quantile
sketch and reads off each unit's threshold (the 1 - q quantile). Pass 2 regenerates the same
images, segments them, and tallies the IoU of "activation above threshold" with every concept.
It regenerates rather than caches so that memory stays flat in the number of images.
"""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.errors import check_choice
from jaxdissect.model import Generator, Segmenter
from jaxdissect.stats import iou, quantile
from jaxdissect.zsample import z_batches


class LayerDissection(NamedTuple):
  """Per-unit results for one layer: thresholds `[U]`, IoU `[U, K]`, best label `[U]`."""

  thresholds: np.ndarray
  iou: np.ndarray
  label: np.ndarray
  best_iou: np.ndarray


def upsample(acts: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear, half-pixel centres, border-clamped resize of `[B, h, w, U]` to `[B, *size, U]`."""
  return jax.image.resize(acts, (acts.shape[0], *size, acts.shape[-1]), "linear")


def _batches(gen: Generator, seg: Segmenter, layer: str, n: int, batch_size: int,
             seed: int, zdim: int) -> Callable[[], Iterator[tuple[jax.Array, jax.Array]]]:
  """A restartable stream of (upsampled activations, labels) over the first n seeded images."""

  @jax.jit
  def step(z):
    image, acts = gen.apply_fn(gen.params, z, capture=(layer,))
    labels = seg.label_fn(seg.params, image)
    return upsample(acts[layer], labels.shape[1:3]), labels

  def stream():
    for _, z in z_batches(n, seed, batch_size, zdim):
      yield step(jnp.asarray(z))

  return stream


def reference_dissect(gen: Generator, seg: Segmenter, layer: str, *, n: int, batch_size: int,
                      seed: int = 1, q: float = 0.01, zdim: int = 512) -> LayerDissection:
  """Dissects `layer` of `gen` with `seg` over the first `n` latents of sample `seed`."""
  check_choice("layer", layer, gen.layers)
  stream = _batches(gen, seg, layer, n, batch_size, seed, zdim)
  first_acts, _ = next(stream())
  num_units, num_concepts = first_acts.shape[-1], len(seg.concepts)

  sketch = quantile.quantile_sketch(num_units)
  sketch_update = jax.jit(sketch.update)
  state = sketch.init()
  for acts, _ in stream():
    state = sketch_update(state, acts)
  if int(jnp.sum(state.nonfinite)):
    raise FloatingPointError(f"{layer}: {np.asarray(state.nonfinite).tolist()} non-finite "
                             "activations per unit")
  thresholds = sketch.result(state, 1.0 - q)[0]

  tally = iou.iou_tally(num_units, num_concepts)
  tally_update = jax.jit(tally.update)
  counts = tally.init()
  for acts, labels in stream():
    counts = tally_update(counts, acts, thresholds, labels)
  scores = iou.iou_scores(counts)
  scores[:, 0] = 0.0  # label 0 means "no concept"
  label = scores.argmax(1)
  return LayerDissection(np.asarray(thresholds), scores, label,
                         scores[np.arange(num_units), label])
