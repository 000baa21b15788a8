"""Class margins: a continuous tie-break for ranking a classifier's units per class.

Balanced accuracy (`class_ablation`) moves only when an ablation flips a prediction. A
classifier that is right on nearly every training image by a wide margin (the scene world's:
99.7%, with mean margins of 8-31 logits) loses no accuracy at all to most single-unit
ablations, so ranking units by the accuracy they cost leaves most of them tied, in unit-index
order, and a class's "top 4" can be four arbitrary units. The margin of an image of class k,
its logit k minus the largest other logit, is what a prediction flips on (and what a CW attack
pushes); its mean over the class's images moves with every unit that feeds the class. So
`rank_units` sorts by accuracy drop first, as the paper does (wherever accuracy decides, the
order is the paper's), then by margin drop within ties, then by unit index.

The margin sweep streams like the accuracy sweep: per-class sums of margins add over batches,
and every unit's ablation goes through the classifier as one vmapped batch of worlds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.class_ablation import check_dataset, edit_groups, num_units, padded_batches
from jaxdissect.classifier import Classifier
from jaxdissect.errors import check_choice
from jaxdissect.model import Edit


def margins(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """`[B]` logit of each image's true class minus its largest other logit."""
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  own = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
  return own - jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)


@functools.partial(jax.jit, static_argnames=("apply_fn", "layer", "num_classes"))
def _margin_sums(params, images, labels, valid, alphas, *, apply_fn, layer, num_classes):
  """`[E, K]` sums over the valid images of each class of their margins, under each of E
  ablations `Edit(alphas[e], 0)` of `layer`, vmapped as E worlds."""
  def world(alpha):
    logits, _ = apply_fn(params, images, {layer: Edit(alpha, jnp.zeros_like(alpha))},
                         capture=())
    m = jnp.where(valid, margins(logits.astype(jnp.float32), labels), 0.0)
    return jnp.zeros((num_classes,), jnp.float32).at[labels].add(m)
  return jax.vmap(world)(alphas)


class MarginSweep(NamedTuple):
  """Mean margin of each class's images with no edit (`baseline [K]`) and with each unit
  zeroed alone (`ablated [U, K]`), `drop = baseline - ablated`, over n images."""

  baseline: np.ndarray
  ablated: np.ndarray
  drop: np.ndarray
  n: int


def single_unit_margins(classifier: Classifier, layer: str, images: Any, labels: Any, *,
                        batch_size: int = 64, chunk: int = 16,
                        progress: Callable[[str, int, int], None] | None = None
                        ) -> MarginSweep:
  """Every unit of `layer` zeroed alone (and the unedited classifier, as one more world with
  nothing zeroed): each class's mean margin `[U, K]`, NaN for a class with no images."""
  check_choice("layer", layer, classifier.layers)
  images, labels = check_dataset(classifier, images, labels)
  units = num_units(classifier, layer)
  alphas = np.concatenate([np.zeros((1, units), np.float32), np.eye(units, dtype=np.float32)])
  groups = edit_groups(alphas, chunk)
  static = {"apply_fn": classifier.apply_fn, "layer": layer,
            "num_classes": len(classifier.classes)}
  sums, done = np.zeros((len(alphas), len(classifier.classes))), 0
  for x, y, valid in padded_batches(images, labels, batch_size):
    parts = [_margin_sums(classifier.params, x, y, valid, g, **static) for g in groups]
    sums += np.concatenate([np.asarray(p, np.float64) for p in parts])[:len(alphas)]
    done += int(np.sum(valid))
    if progress is not None:
      progress("class margins", done, labels.shape[0])
  count = np.bincount(labels, minlength=len(classifier.classes)).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean = np.where(count > 0, sums / count, np.nan)
  return MarginSweep(baseline=mean[0], ablated=mean[1:], drop=mean[0][None] - mean[1:],
                     n=int(labels.shape[0]))


def rank_units(accuracy_drop: np.ndarray, margin_drop: np.ndarray | None = None) -> np.ndarray:
  """`[K, U]`: per class, units by accuracy drop (`Sweep.drop [U, K]`), largest first, ties
  broken by margin drop (`MarginSweep.drop [U, K]`, largest first; None: no tie-break), then
  by unit index. NaN drops rank last. With `margin_drop=None` this is
  `class_ablation.rank_units`."""
  acc = np.asarray(accuracy_drop, np.float64)
  if acc.ndim != 2:
    raise ValueError(f"accuracy drop has shape {list(acc.shape)}, expected [units, classes]")
  margin = np.zeros_like(acc) if margin_drop is None else np.asarray(margin_drop, np.float64)
  if margin.shape != acc.shape:
    raise ValueError(f"margin drop has shape {list(margin.shape)}, expected {list(acc.shape)} "
                     "(the accuracy drop's [units, classes])")
  index = np.arange(acc.shape[0])
  keys = lambda d: -np.nan_to_num(d, nan=-np.inf)
  return np.stack([np.lexsort((index, keys(margin[:, k]), keys(acc[:, k])))
                   for k in range(acc.shape[1])])
