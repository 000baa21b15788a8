"""Straightforward two-pass dissection of one layer: the reference every faster path must match.

Pass 1 streams the units' activations, upsampled to segmentation resolution, and keeps each unit's
largest values, which is enough to read off the exact (1 - q) quantile (numpy's linear rule).
Pass 2 regenerates the same images, segments them, and tallies the IoU of "activation above
threshold" with every concept. It regenerates rather than caches so that memory stays flat in the
number of images (only the top q of each unit's values is kept). It is slow on purpose: no
sketches, no interpolation, nothing to trust but counting.
"""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.errors import check_choice
from jaxdissect.model import Generator, Segmenter
from jaxdissect.stats import iou
from jaxdissect.stats.topk import largest_values
from jaxdissect.upsample import upsample
from jaxdissect.latents import seeded


class LayerDissection(NamedTuple):
  """Per-unit results for one layer: thresholds `[U]`, IoU `[U, K]`, best label `[U]`."""

  thresholds: np.ndarray
  iou: np.ndarray
  label: np.ndarray
  best_iou: np.ndarray


def _batches(gen: Generator, seg: Segmenter, layer: str, n: int, batch_size: int,
             seed: int) -> Callable[[], Iterator[tuple[jax.Array, jax.Array]]]:
  """A restartable stream of (upsampled activations, labels) over the first n seeded images."""

  @jax.jit
  def step(z):
    image, acts = gen.apply_fn(gen.params, z, capture=(layer,))
    labels = seg.label_fn(seg.params, image)
    return upsample(acts[layer], labels.shape[1:3]), labels

  def stream():
    for _, z in seeded(seed).batches(n, batch_size, gen.latent_shape):
      yield step(jnp.asarray(z))

  return stream


def exact_top_quantile(stream: Iterator[jax.Array], q: float, total: int) -> np.ndarray:
  """The exact (1 - q) quantile per unit (numpy's linear rule) of a stream of `[..., U]` arrays
  holding `total` rows in all.

  Keeps, per unit, only the values that can still be among the top `q` share: the union of each
  batch's top values contains the global top values, so memory is O(q * total * U).
  """
  position = (1.0 - q) * (total - 1)  # in the ascending order of all `total` values
  low = int(np.floor(position))
  keep = total - low  # the ascending ranks low .. total - 1
  seen = 0

  def rows():  # [U, N_i] host chunks, checked and counted on the way
    nonlocal seen
    for acts in stream:
      values = np.asarray(acts, np.float32).reshape(-1, acts.shape[-1])
      if not np.all(np.isfinite(values)):
        raise FloatingPointError(f"non-finite activations in units "
                                 f"{np.nonzero(~np.all(np.isfinite(values), 0))[0].tolist()}")
      seen += values.shape[0]
      yield np.ascontiguousarray(values.T)

  top = np.sort(largest_values(rows(), keep), axis=1)  # top[:, i] has ascending rank low + i
  if seen != total:
    raise ValueError(f"stream held {seen} rows, expected {total}")
  hi_val = top[:, min(1, top.shape[1] - 1)]
  return (top[:, 0] + (position - low) * (hi_val - top[:, 0])).astype(np.float32)


def reference_dissect(gen: Generator, seg: Segmenter, layer: str, *, n: int, batch_size: int,
                      seed: int = 1, q: float = 0.01,
                      thresholds: np.ndarray | None = None) -> LayerDissection:
  """Dissects `layer` of `gen` with `seg` over the first `n` latents of sample `seed`.

  `thresholds` (`[U]`) skips pass 1 and tallies IoU at the given levels instead.
  """
  check_choice("layer", layer, gen.layers)
  stream = _batches(gen, seg, layer, n, batch_size, seed)
  if thresholds is None:
    first, _ = next(stream())
    total = n * first.shape[1] * first.shape[2]
    thresholds = exact_top_quantile((acts for acts, _ in stream()), q, total)
  num_units, num_concepts = len(thresholds), len(seg.concepts)
  tally = iou.iou_tally(num_units, num_concepts)
  tally_update = jax.jit(tally.update)
  counts = tally.init()
  for acts, labels in stream():
    counts = tally_update(counts, acts, jnp.asarray(thresholds), labels)
  scores = iou.iou_scores(counts)
  scores[:, 0] = 0.0  # label 0 means "no concept"
  label = scores.argmax(1)
  return LayerDissection(np.asarray(thresholds), scores, label,
                         scores[np.arange(num_units), label])
