"""Class ablation: which units of a layer a classifier needs for each class (PNAS).

A unit whose label is "snow" matters to "ski resort" only if the classifier uses it. As the
original (davidbau/dissect, `experiment/intervention_experiment.py`) we score each class as a
one-vs-rest problem, balanced accuracy = (recall + true-negative rate) / 2 of "predicted == k"
against "label == k" (so 0.5 is chance whatever the class's share of the data), zero every unit
of one layer alone and rank units per class by the accuracy it loses, on a training split.
Then the top N units of each class are zeroed together, and separately all units but the top N,
and every class is scored on held-out images: removing a class's few top units should destroy
it and leave the other classes nearly untouched; keeping only them should mostly preserve it.

Scores come from counts (`Counts`: images labelled, predicted and correctly predicted per
class), which add over batches, so the dataset streams through in batches of `batch_size`
images with memory bounded by it. Edits go through the classifier `chunk` at a time as one
vmapped batch of counterfactual worlds, one compiled function for every chunk and batch (the
last of each is padded, and padded images are not counted).

Confidence intervals are 99% normal-approximation (Wald) intervals, 2.576 standard errors of
(recall + TNR) / 2 with recall and TNR independent binomial proportions over the class's
positives and negatives. That is the paper's rule (its plots use 2.58 standard errors), it
follows from the counts alone so it streams like them, and a bootstrap would multiply the cost
of every sweep by its resamples. Its known weakness: a proportion of exactly 0 or 1 gets a
zero-width interval.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.causal import Z99
from jaxdissect.classifier import Classifier
from jaxdissect.errors import check_choice, check_shape
from jaxdissect.model import Edit

SIZES = (1, 2, 3, 4, 5, 10, 20)


class Counts(NamedTuple):
  """Per-class tallies `[..., K]` (int) over `total` images `[...]`; they add over batches."""

  true: Any
  predicted: Any
  correct: Any
  total: Any


def count(predicted: jax.Array, labels: jax.Array, num_classes: int,
          valid: jax.Array | None = None) -> Counts:
  """Counts of `[B]` predicted against `[B]` true classes; `valid` `[B]` bool drops padding."""
  valid = jnp.ones(labels.shape, bool) if valid is None else valid
  weight = valid.astype(jnp.int32)
  true = jnp.zeros((num_classes,), jnp.int32).at[labels].add(weight)
  pred = jnp.zeros((num_classes,), jnp.int32).at[predicted].add(weight)
  correct = jnp.zeros((num_classes,), jnp.int32).at[labels].add(weight * (predicted == labels))
  return Counts(true, pred, correct, jnp.sum(weight))


def _rates(counts: Counts) -> tuple[Any, Any, Any, Any]:
  """`(recall, true-negative rate, positives, negatives)`, float64 numpy `[..., K]`."""
  true, pred, correct = (np.asarray(a, np.float64) for a in counts[:3])
  total = np.asarray(counts.total, np.float64)[..., None]
  negatives = total - true
  true_neg = negatives - (pred - correct)
  with np.errstate(invalid="ignore", divide="ignore"):
    return correct / true, true_neg / negatives, true, negatives


def balanced_accuracy(counts: Counts) -> np.ndarray:
  """`[..., K]` (recall + true-negative rate) / 2 per class; NaN for a class with no images
  (or no other images), as in the original."""
  recall, tnr, _, _ = _rates(counts)
  return (recall + tnr) / 2


def ci99(counts: Counts) -> np.ndarray:
  """`[..., K]` half-width of the 99% interval of `balanced_accuracy(counts)` (module doc)."""
  recall, tnr, pos, neg = _rates(counts)
  with np.errstate(invalid="ignore", divide="ignore"):
    var = (recall * (1 - recall) / pos + tnr * (1 - tnr) / neg) / 4
  return Z99 * np.sqrt(var)


def class_index(classifier: Classifier, names: str | Sequence[str]) -> int | np.ndarray:
  """The logit index of a class name (or an array of them), raising on unknown names."""
  if isinstance(names, str):
    if names not in classifier.classes:
      raise ValueError(f"unknown class {names!r}; the classifier's classes are: "
                       f"{', '.join(map(repr, classifier.classes))}")
    return classifier.classes.index(names)
  return np.asarray([class_index(classifier, n) for n in names], np.int32)


def num_units(classifier: Classifier, layer: str) -> int:
  """Channels of `layer` (no computation: shapes only)."""
  check_choice("layer", layer, classifier.layers)
  probe = jax.ShapeDtypeStruct((1, *classifier.image_shape), jnp.float32)
  acts = jax.eval_shape(lambda x: classifier.apply_fn(classifier.params, x, None,
                                                      capture=(layer,))[1], probe)
  return int(acts[layer].shape[-1])


def check_dataset(classifier: Classifier, images: Any, labels: Any) -> tuple[Any, np.ndarray]:
  """`(images, labels)` after checking `[n, *image_shape]` floats against `[n]` class indices
  in range. Images stay as given (a memory-mapped array is read a batch at a time)."""
  shape = tuple(np.shape(images))
  check_shape("images", shape, (None, *classifier.image_shape))
  if not shape[0]:
    raise ValueError(f"images are empty (shape {list(shape)}); expected at least one image")
  dtype = getattr(images, "dtype", None) or np.asarray(images).dtype
  if not np.issubdtype(dtype, np.floating):
    raise ValueError(f"images have dtype {dtype} (shape {list(shape)}), expected floats in "
                     f"[-1, 1]")
  labels = np.asarray(labels)
  if labels.shape != shape[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels have shape {list(labels.shape)} and dtype {labels.dtype}, expected "
                     f"integer class indices of shape [{shape[0]}] (one per image)")
  k = len(classifier.classes)
  if labels.size and (labels.min() < 0 or labels.max() >= k):
    raise ValueError(f"labels range over [{labels.min()}, {labels.max()}], expected class "
                     f"indices in [0, {k - 1}] ({k} classes)")
  return images, labels


_STATIC = ("apply_fn", "layer", "num_classes")


def _predict_counts(params, images, labels, valid, alpha, *, apply_fn, layer, num_classes):
  """Counts of one batch under the ablation `Edit(alpha, 0)` of `layer` (`alpha` `[C]`, or
  None for the unedited classifier)."""
  edits = None if alpha is None else {layer: Edit(alpha, jnp.zeros_like(alpha))}
  logits, _ = apply_fn(params, images, edits, capture=())
  return count(jnp.argmax(logits, axis=-1), labels, num_classes, valid)


_one_counts = jax.jit(_predict_counts, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _edited_counts(params, images, labels, valid, alphas, *, apply_fn, layer, num_classes):
  """`Counts` `[E, K]` of one batch under E ablations (`alphas [E, C]`), vmapped as E worlds."""
  return jax.vmap(lambda a: _predict_counts(params, images, labels, valid, a, apply_fn=apply_fn,
                                            layer=layer, num_classes=num_classes))(alphas)


def padded_batches(images: Any, labels: np.ndarray, batch_size: int):
  """`(images, labels, valid)` batches of exactly `batch_size`, the last padded by repeating
  its last image (and marked invalid), so every batch goes through one compiled function."""
  if batch_size < 1:
    raise ValueError(f"batch_size is {batch_size}, expected a positive number of images")
  n = labels.shape[0]
  size = min(batch_size, n)
  for start in range(0, n, size):
    stop = min(start + size, n)
    pad = size - (stop - start)
    x = np.asarray(images[start:stop], np.float32)
    y = labels[start:stop].astype(np.int32)
    if pad:
      x = np.concatenate([x, np.repeat(x[-1:], pad, 0)])
      y = np.concatenate([y, np.repeat(y[-1:], pad, 0)])
    yield jnp.asarray(x), jnp.asarray(y), jnp.arange(size) < stop - start


def edit_groups(alphas: np.ndarray, chunk: int) -> list[jax.Array]:
  """`[E, C]` edits as groups of exactly `chunk` rows (the last padded with its last row)."""
  if chunk < 1:
    raise ValueError(f"chunk is {chunk}, expected a positive number of edits")
  chunk = min(chunk, alphas.shape[0])
  padded = np.concatenate([alphas, np.repeat(alphas[-1:], -alphas.shape[0] % chunk, 0)])
  return [jnp.asarray(g) for g in padded.reshape(-1, chunk, alphas.shape[1])]


def _add(total: Counts | None, new: Counts) -> Counts:
  new = Counts(*(np.asarray(a, np.int64) for a in new))
  return new if total is None else Counts(*(a + b for a, b in zip(total, new)))


def _models(classifier: Classifier, layer: str) -> dict:
  """The static half of the classifier for the jitted functions (one compile per model)."""
  return {"apply_fn": classifier.apply_fn, "layer": layer,
          "num_classes": len(classifier.classes)}


def baseline_counts(classifier: Classifier, images: Any, labels: Any, *,
                    batch_size: int = 64) -> Counts:
  """Counts `[K]` of the unedited classifier on `(images [n, H, W, 3], labels [n])`."""
  images, labels = check_dataset(classifier, images, labels)
  models = _models(classifier, classifier.layers[0])
  total = None
  for x, y, valid in padded_batches(images, labels, batch_size):
    total = _add(total, _one_counts(classifier.params, x, y, valid, None, **models))
  return total


def edit_counts(classifier: Classifier, layer: str, images: Any, labels: Any,
                alphas: np.ndarray, *, batch_size: int = 64, chunk: int = 16,
                progress: Callable[[str, int, int], None] | None = None) -> Counts:
  """Counts `[E, K]` with each of E ablations of `layer` (row e of `alphas [E, C]` zeroes
  units with those weights, 1 = fully), every image batch once through `chunk`-sized vmapped
  groups of edits."""
  images, labels = check_dataset(classifier, images, labels)
  units = num_units(classifier, layer)
  alphas = np.asarray(alphas, np.float32)
  if alphas.ndim != 2 or alphas.shape[1] != units or alphas.shape[0] < 1:
    raise ValueError(f"alphas have shape {list(alphas.shape)}, expected [edits, {units}] "
                     f"({units} units in {layer!r})")
  models = _models(classifier, layer)
  groups = edit_groups(alphas, chunk)
  total, done = None, 0
  for x, y, valid in padded_batches(images, labels, batch_size):
    parts = [_edited_counts(classifier.params, x, y, valid, g, **models) for g in groups]
    total = _add(total, Counts(*(np.concatenate(a)[:len(alphas)] for a in zip(*parts))))
    done += int(np.sum(valid))
    if progress is not None:
      progress("class ablation", done, labels.shape[0])
  return total


class Sweep(NamedTuple):
  """Balanced accuracies with no edit (`baseline [K]`) and with each unit zeroed alone
  (`ablated [U, K]`, 99% half-widths `ci99`), and `drop = baseline - ablated`, over n images."""

  baseline: np.ndarray
  ablated: np.ndarray
  drop: np.ndarray
  ci99: np.ndarray
  n: int


def _sweep(base: Counts, ablated: Counts) -> Sweep:
  b, a = balanced_accuracy(base), balanced_accuracy(ablated)
  return Sweep(baseline=b, ablated=a, drop=b[None] - a, ci99=ci99(ablated), n=int(base.total))


def single_unit_sweep(classifier: Classifier, layer: str, images: Any, labels: Any, *,
                      batch_size: int = 64, chunk: int = 16,
                      progress: Callable[[str, int, int], None] | None = None) -> Sweep:
  """Every unit of `layer` zeroed alone, vmapped over units: per-class accuracies `[U, K]`."""
  base = baseline_counts(classifier, images, labels, batch_size=batch_size)
  eye = np.eye(num_units(classifier, layer), dtype=np.float32)
  return _sweep(base, edit_counts(classifier, layer, images, labels, eye, batch_size=batch_size,
                                  chunk=chunk, progress=progress))


def single_unit_sweep_looped(classifier: Classifier, layer: str, images: Any, labels: Any, *,
                             batch_size: int = 64) -> Sweep:
  """`single_unit_sweep` as the original runs it, one unit at a time in a Python loop (the
  reference the vmapped sweep is tested against; slower)."""
  images, labels = check_dataset(classifier, images, labels)
  base = baseline_counts(classifier, images, labels, batch_size=batch_size)
  models = _models(classifier, layer)
  units = num_units(classifier, layer)
  rows = []
  for unit in range(units):
    alpha = jnp.zeros((units,), jnp.float32).at[unit].set(1.0)
    total = None
    for x, y, valid in padded_batches(images, labels, batch_size):
      total = _add(total, _one_counts(classifier.params, x, y, valid, alpha, **models))
    rows.append(total)
  return _sweep(base, Counts(*(np.stack(a) for a in zip(*rows))))


def rank_units(drop: np.ndarray) -> np.ndarray:
  """`[K, U]`: per class, units from the largest accuracy drop down (ties by unit index, so
  the order is deterministic); `drop` is `Sweep.drop` `[U, K]`. NaN drops rank last."""
  drop = np.asarray(drop, np.float64)
  if drop.ndim != 2:
    raise ValueError(f"drop has shape {list(drop.shape)}, expected [units, classes]")
  return np.argsort(-np.nan_to_num(drop.T, nan=-np.inf), axis=1, kind="stable")


class Curves(NamedTuple):
  """Held-out balanced accuracies when class k's top `sizes[s]` units are zeroed together
  (`removed [K, S, K]`: for every class, last axis) or all units but them (`kept`), with 99%
  half-widths, and with no edit (`baseline [K]`). `own_and_others` splits the last axis."""

  sizes: np.ndarray
  baseline: np.ndarray
  baseline_ci99: np.ndarray
  removed: np.ndarray
  removed_ci99: np.ndarray
  kept: np.ndarray
  kept_ci99: np.ndarray
  n: int


def _check_sizes(sizes: Sequence[int], units: int) -> np.ndarray:
  sizes = np.asarray(sizes)
  if sizes.ndim != 1 or not sizes.size or not np.issubdtype(sizes.dtype, np.integer) or \
      sizes.min() < 1 or sizes.max() > units:
    raise ValueError(f"sizes are {sizes.tolist()}, expected unit counts in [1, {units}]")
  return sizes


def ablation_curves(classifier: Classifier, layer: str, images: Any, labels: Any,
                    ranking: np.ndarray, sizes: Sequence[int] = SIZES, *,
                    batch_size: int = 64, chunk: int = 16,
                    progress: Callable[[str, int, int], None] | None = None) -> Curves:
  """Zero each class's top N units of `ranking` (`[K, U]`, from `rank_units` on a training
  split), and separately all units but those, for every N in `sizes` (capped at the number of
  units); score every class on these (held-out) images. All 2·K·S edits in one pass."""
  units = num_units(classifier, layer)
  k = len(classifier.classes)
  ranking = np.asarray(ranking)
  if ranking.shape != (k, units):
    raise ValueError(f"ranking has shape {list(ranking.shape)}, expected [{k}, {units}] "
                     f"(classes, units of {layer!r})")
  sizes = _check_sizes(np.unique(np.minimum(np.asarray(sizes), units)), units)
  top = np.zeros((k, len(sizes), units), np.float32)
  for c in range(k):
    for s, size in enumerate(sizes):
      top[c, s, ranking[c, :size]] = 1.0
  alphas = np.concatenate([top, 1.0 - top]).reshape(-1, units)
  counts = edit_counts(classifier, layer, images, labels, alphas, batch_size=batch_size,
                       chunk=chunk, progress=progress)
  base = baseline_counts(classifier, images, labels, batch_size=batch_size)
  acc = balanced_accuracy(counts).reshape(2, k, len(sizes), k)
  ci = ci99(counts).reshape(2, k, len(sizes), k)
  return Curves(sizes=sizes, baseline=balanced_accuracy(base), baseline_ci99=ci99(base),
                removed=acc[0], removed_ci99=ci[0], kept=acc[1], kept_ci99=ci[1],
                n=int(base.total))


def own_and_others(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """`[K, S, K]` curve -> `(own [K, S], others [K, S])`: the edited class's own accuracy and
  the mean accuracy of the other classes under the same edit."""
  scores = np.asarray(scores)
  k = scores.shape[0]
  own = np.einsum("csc->cs", scores)
  mask = ~np.eye(k, dtype=bool)[:, None, :]
  others = np.nanmean(np.where(mask, scores, np.nan), axis=-1)
  return own, others


class Experiment(NamedTuple):
  """The whole experiment: the single-unit sweep on the training split, the per-class ranking
  it gives (`[K, U]`) and the curves on the held-out split."""

  sweep: Sweep
  ranking: np.ndarray
  curves: Curves


def class_ablation(classifier: Classifier, layer: str, train: tuple[Any, Any],
                   test: tuple[Any, Any], sizes: Sequence[int] = SIZES, *,
                   batch_size: int = 64, chunk: int = 16,
                   progress: Callable[[str, int, int], None] | None = None) -> Experiment:
  """Rank `layer`'s units per class by single-unit ablation on `train` `(images, labels)` and
  measure top-N removal and keep-only curves on `test` (the paper's train/val protocol, which
  keeps the ranking from being fitted to the images it is scored on)."""
  check_choice("layer", layer, classifier.layers)
  sweep = single_unit_sweep(classifier, layer, *train, batch_size=batch_size, chunk=chunk,
                            progress=progress)
  ranking = rank_units(sweep.drop)
  curves = ablation_curves(classifier, layer, *test, ranking, sizes, batch_size=batch_size,
                           chunk=chunk, progress=progress)
  return Experiment(sweep, ranking, curves)
