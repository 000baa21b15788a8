"""Adversarial attacks seen through units: which units does a targeted attack push? (PNAS)

The paper attacks a scene classifier towards a target class and finds that the attack works
mostly by changing the few units that class depends on (its top units by single-unit ablation,
`jaxdissect.class_ablation`): the mean |change of activation| of the target's 4 most important
units is several times that of the other units. `unit_shift` measures that, with 99% intervals.

The attack is a targeted Carlini-Wagner L2 attack (`cw_l2`), as the paper's (foolbox's
`CarliniWagnerL2Attack`), rather than PGD: CW looks for the *smallest* L2 change that makes the
target win (a tanh reparametrisation keeps pixels in [-1, 1] without clipping, a margin loss
stops pushing once the target leads by `confidence`, and a per-image binary search on the
trade-off constant keeps the smallest successful image), so the activation changes measured are
the ones the classifier needs, not the ones a fixed PGD budget happens to spend. Adam from
optax does the steps; the whole search is one jitted `lax.scan` over a batch of images.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdissect.causal import Z99
from jaxdissect.class_ablation import class_index, num_units
from jaxdissect.classifier import Classifier
from jaxdissect.errors import check_choice, check_shape


class Attack(NamedTuple):
  """Per image: the adversarial image (the original where the attack failed), whether it is
  classified as the target, and its L2 distance to the original (inf where it failed)."""

  adversarial: np.ndarray
  success: np.ndarray
  l2: np.ndarray


def _cw_loss(w, x0, target, const, params, *, apply_fn, confidence):
  """Summed CW objective `|x - x0|^2 + const * max(max_other - target_logit + confidence, 0)`
  of images `x = tanh(w)`; aux: (x, squared distances, whether the target wins)."""
  x = jnp.tanh(w)
  logits, _ = apply_fn(params, x, None, capture=())
  onehot = jax.nn.one_hot(target, logits.shape[-1], dtype=bool)
  own = jnp.sum(jnp.where(onehot, logits, 0.0), axis=-1)
  other = jnp.max(jnp.where(onehot, -jnp.inf, logits), axis=-1)
  dist = jnp.sum(jnp.square(x - x0), axis=(1, 2, 3))
  loss = jnp.sum(dist + const * jnp.maximum(other - own + confidence, 0.0))
  return loss, (x, dist, jnp.argmax(logits, axis=-1) == target)


_STATIC = ("apply_fn", "steps", "search_steps", "learning_rate", "initial_const", "confidence")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _cw_batch(params, x0, target, *, apply_fn, steps, search_steps, learning_rate,
              initial_const, confidence):
  """`(best adversarial [B, H, W, 3], best squared L2 [B] (inf: none found))` for one batch."""
  opt = optax.adam(learning_rate)
  w0 = jnp.arctanh(jnp.clip(x0, -1.0, 1.0) * (1.0 - 1e-6))
  grad = jax.grad(functools.partial(_cw_loss, apply_fn=apply_fn, confidence=confidence),
                  has_aux=True)
  b = x0.shape[0]

  def step(carry, _):
    w, state, const, best_x, best_d, hit = carry
    g, (x, dist, wins) = grad(w, x0, target, const, params)
    better = wins & (dist < best_d)
    best_x = jnp.where(better[:, None, None, None], x, best_x)
    best_d = jnp.where(better, dist, best_d)
    updates, state = opt.update(g, state, w)
    return (optax.apply_updates(w, updates), state, const, best_x, best_d, hit | wins), None

  def search(carry, _):
    const, lo, hi, best_x, best_d = carry
    init = (w0, opt.init(w0), const, best_x, best_d, jnp.zeros((b,), bool))
    (_, _, _, best_x, best_d, hit), _ = jax.lax.scan(step, init, None, length=steps)
    hi = jnp.where(hit, jnp.minimum(hi, const), hi)
    lo = jnp.where(hit, lo, jnp.maximum(lo, const))
    const = jnp.where(jnp.isfinite(hi), (lo + hi) / 2, const * 10)
    return (const, lo, hi, best_x, best_d), None

  init = (jnp.full((b,), initial_const, jnp.float32), jnp.zeros((b,), jnp.float32),
          jnp.full((b,), jnp.inf, jnp.float32), x0, jnp.full((b,), jnp.inf, jnp.float32))
  (_, _, _, best_x, best_d), _ = jax.lax.scan(search, init, None, length=search_steps)
  return best_x, best_d


def _check_batch(classifier: Classifier, name: str, images: Any) -> np.ndarray:
  """`images` as float32 after checking a non-empty float `[n, *image_shape]` batch."""
  images = np.asarray(images)
  check_shape(name, images.shape, (None, *classifier.image_shape))
  if not images.shape[0]:
    raise ValueError(f"{name} are empty (shape {list(images.shape)}); expected at least one")
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"{name} have dtype {images.dtype} (shape {list(images.shape)}), expected "
                     "floats in [-1, 1]")
  return images.astype(np.float32)


def _batches(n: int, batch_size: int) -> tuple[int, range]:
  """`(size, starts)` of batches of `batch_size` (at most n) images covering n."""
  if batch_size < 1:
    raise ValueError(f"batch_size is {batch_size}, expected a positive number of images")
  size = min(batch_size, n)
  return size, range(0, n, size)


def _padded(x: np.ndarray, start: int, size: int) -> tuple[np.ndarray, int]:
  """Rows `start:start + size` of x, padded to `size` by repeating the last (and how many
  are real), so every batch goes through one compiled function."""
  part = x[start:start + size]
  real = part.shape[0]
  return np.concatenate([part, np.repeat(part[-1:], size - real, 0)]), real


def cw_l2(classifier: Classifier, images: Any, target: str, *, steps: int = 200,
          search_steps: int = 4, learning_rate: float = 0.01, initial_const: float = 1.0,
          confidence: float = 0.0, batch_size: int = 32) -> Attack:
  """Targeted CW-L2 attack of `images [n, H, W, 3]` (in [-1, 1]) towards class `target`.

  Each of `search_steps` rounds runs `steps` Adam steps from the original image with a
  per-image constant, then halves the interval of constants that succeed (or multiplies the
  constant by 10 until one does). The defaults of foolbox 1.x-2.x (the API the paper's notebook
  calls) are 5 rounds of 1000 steps at rate 5e-3 from const 1e-2; these are smaller, for small
  models. Images go `batch_size` at a time (the last batch padded), every batch through one
  compiled function.
  """
  images = _check_batch(classifier, "images", images)
  t = class_index(classifier, target)
  if min(steps, search_steps) < 1:
    raise ValueError(f"steps and search_steps are {steps} and {search_steps}; each must be at "
                     "least 1")
  size, starts = _batches(images.shape[0], batch_size)
  kwargs = {"apply_fn": classifier.apply_fn, "steps": steps, "search_steps": search_steps,
            "learning_rate": learning_rate, "initial_const": initial_const,
            "confidence": confidence}
  advs, dists = [], []
  for start in starts:
    x, real = _padded(images, start, size)
    adv, dist = _cw_batch(classifier.params, jnp.asarray(x), jnp.full((size,), t, jnp.int32),
                          **kwargs)
    advs.append(np.asarray(adv)[:real])
    dists.append(np.asarray(dist)[:real])
  dist = np.concatenate(dists)
  return Attack(adversarial=np.concatenate(advs), success=np.isfinite(dist), l2=np.sqrt(dist))


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _predict(params, images, *, apply_fn):
  return jnp.argmax(apply_fn(params, images, None, capture=())[0], axis=-1)


def eligible(classifier: Classifier, images: Any, labels: Any, target: str, *,
             batch_size: int = 64) -> np.ndarray:
  """`[n]` bool: images neither labelled nor predicted as `target`, the images the paper
  attacks (an attack on an image already of the target class measures nothing)."""
  images = _check_batch(classifier, "images", images)
  labels = np.asarray(labels)
  if labels.shape != images.shape[:1]:
    raise ValueError(f"labels have shape {list(labels.shape)}, expected [{images.shape[0]}] "
                     "(one class index per image)")
  t = class_index(classifier, target)
  size, starts = _batches(images.shape[0], batch_size)
  predicted = []
  for start in starts:
    x, real = _padded(images, start, size)
    predicted.append(np.asarray(_predict(classifier.params, jnp.asarray(x),
                                         apply_fn=classifier.apply_fn))[:real])
  return (labels != t) & (np.concatenate(predicted) != t)


@functools.partial(jax.jit, static_argnames=("apply_fn", "layer", "reduce"))
def _shifts(params, before, after, *, apply_fn, layer, reduce):
  """`[B, C]` per image and unit: mean |a_after - a_before| over space ("mean"), or
  |max a_after - max a_before| ("peak")."""
  a = apply_fn(params, before, None, capture=(layer,))[1][layer]
  b = apply_fn(params, after, None, capture=(layer,))[1][layer]
  if reduce == "mean":
    return jnp.mean(jnp.abs(b - a), axis=(1, 2))
  return jnp.abs(jnp.max(b, axis=(1, 2)) - jnp.max(a, axis=(1, 2)))


class Shift(NamedTuple):
  """Mean activation change of the chosen units (`top`) and of all other units (`other`) over
  the n images the attack turned into the target, with 99% half-widths; `per_unit [C]` is each
  unit's mean change."""

  top: float
  top_ci99: float
  other: float
  other_ci99: float
  per_unit: np.ndarray
  n: int


def _mean_ci(x: np.ndarray) -> tuple[float, float]:
  se = np.std(x, ddof=1) / np.sqrt(len(x)) if len(x) > 1 else np.nan
  return float(np.mean(x)), float(Z99 * se)


def unit_shift(classifier: Classifier, layer: str, images: Any, adversarial: Any,
               success: Any, units: Sequence[int], *, reduce: str = "mean",
               batch_size: int = 64) -> Shift:
  """How much the attack moved `units` (the target's top units, e.g. the first 4 of
  `class_ablation.rank_units(sweep.drop)[target]`) against the other units of `layer`.

  Per successful image and unit, the change is the spatial mean of |adversarial - original
  activation| ("mean", the paper's measure at conv5_3) or the change of the unit's peak
  ("peak", what the paper's final bar chart plots). Each image's changes are averaged over the
  chosen units and over the others, and the 99% intervals are 2.576 standard errors of those
  per-image means across images: the images are the independent draws (the paper divides the
  spread of all image-unit values by the square root of the number of images, which mixes the
  spread between units into the error of the mean).
  """
  check_choice("layer", layer, classifier.layers)
  check_choice("reduce", reduce, ("mean", "peak"))
  images = _check_batch(classifier, "images", images)
  adversarial = _check_batch(classifier, "adversarial images", adversarial)
  success = np.asarray(success)
  if adversarial.shape != images.shape or success.shape != images.shape[:1] or \
      success.dtype != bool:
    raise ValueError(f"images {list(images.shape)}, adversarial images "
                     f"{list(adversarial.shape)} and success {list(success.shape)} "
                     f"({success.dtype}) do not match: expected the same image shape and a "
                     f"bool per image")
  count = num_units(classifier, layer)
  units = np.asarray(units)
  if units.ndim != 1 or not units.size or not np.issubdtype(units.dtype, np.integer) or \
      units.min() < 0 or units.max() >= count or len(set(units.tolist())) != units.size or \
      units.size == count:
    raise ValueError(f"units are {units.tolist()}, expected distinct unit indices in "
                     f"[0, {count - 1}] that leave some other units of {layer!r}")
  if not success.any():
    raise ValueError("no image became the target (success is all False); nothing to measure")
  before, after = images[success], adversarial[success]
  size, starts = _batches(before.shape[0], batch_size)
  rows = []
  for start in starts:
    a, real = _padded(before, start, size)
    b, _ = _padded(after, start, size)
    rows.append(np.asarray(_shifts(classifier.params, jnp.asarray(a), jnp.asarray(b),
                                   apply_fn=classifier.apply_fn, layer=layer,
                                   reduce=reduce))[:real])
  shifts = np.concatenate(rows).astype(np.float64)  # [n, C]
  chosen = np.zeros(count, bool)
  chosen[units] = True
  top, top_ci = _mean_ci(shifts[:, chosen].mean(1))
  other, other_ci = _mean_ci(shifts[:, ~chosen].mean(1))
  return Shift(top=top, top_ci99=top_ci, other=other, other_ci99=other_ci,
               per_unit=shifts.mean(0), n=int(shifts.shape[0]))
