"""Exact counts at given per-unit levels, with the per-category counts GAN Dissection's IoU needs.

Once each unit's level is known (given, or chosen on another sample), a dissection needs only
integer counts at that level: pixels above it per label, and, for the original GAN Dissection's
IoU, the unit's on-pixels counted only in images where a label of the label's category occurs.
That last count is a per-image quantity (category presence times the image's on-count), so this
tally wraps `conditional.conditional_histogram` (label rows, exact comparisons, the fused CPU
loops) and counts its images one at a time, adding each image's on-count to the categories present
in it. The same tally on a grid of levels gives the category-conditional CDFs the original's IQR
threshold is chosen from (`iqr_choice`).

Label categories follow the original: `label_category[l]` is the index of label l's category
among the segmenter's categories (0 when it has none, as the original maps label 0 '-'), and a
category is present in an image when any label entry of the image (any channel, 0 included)
has that category.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.stats import conditional
from jaxdissect.stats.base import Stat


class LevelsState(NamedTuple):
  """`conditional.ConditionalState`'s counts plus per-category ones (C categories, T levels).

  `category_on [C, U, T]`: pixels above each level in images where category c is present;
  `category_pixels [C]`: pixels of those images; `given_label [U]`: a label fixed for each unit
  (-1: the best IoU), configuration like `edges`.
  """

  edges: jax.Array
  above: jax.Array
  count: jax.Array
  pixels: jax.Array
  nonfinite: jax.Array
  bad_labels: jax.Array
  mismatch: jax.Array
  category_on: jax.Array
  category_pixels: jax.Array
  given_label: jax.Array


def categories_of(concepts: Sequence[tuple[str, str]]) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """The categories in order of first appearance among labels 1.. and each label's index into
  them (0 for a label whose category is not among them, as the original does for '-')."""
  names: list[str] = []
  for _, category in concepts[1:]:
    if category not in names:
      names.append(category)
  names = names or ["-"]
  return tuple(names), tuple(names.index(c) if c in names else 0 for _, c in concepts)


def levels_tally(num_units: int, num_concepts: int, edges: np.ndarray,
                 label_category: Sequence[int], given_label: np.ndarray | None = None) -> Stat:
  """Counts above `edges [U, T]` per label row and per category (see `LevelsState`).

  update(state, acts [B, H, W, U], labels [B, H, W, D], raw=None) -> state, `raw` the map
  `acts` was upsampled from (the CPU then counts from it); merge adds counts.
  """
  cond = conditional.conditional_histogram(num_units, num_concepts, edges)
  label_category = np.asarray(label_category, np.int32)
  if label_category.shape != (num_concepts,):
    raise ValueError(f"label_category has {label_category.shape[0]} entries, expected one per "
                     f"label ({num_concepts})")
  num_categories = int(label_category.max()) + 1
  given = (np.full(num_units, -1, np.int32) if given_label is None
           else np.asarray(given_label, np.int32))
  cats = jnp.asarray(label_category)

  def init() -> LevelsState:
    base = cond.init()
    levels = base.edges.shape[1]
    return LevelsState(*base, jnp.zeros((num_categories, num_units, levels), jnp.int32),
                       jnp.zeros((num_categories,), jnp.int32), jnp.asarray(given))

  def present(labels: jax.Array) -> jax.Array:
    """`[C]` int32: 1 for the categories of the labels in one image `[H, W, D]`."""
    flat = labels.reshape(-1)
    flat = jnp.where((flat >= 0) & (flat < num_concepts), flat, num_concepts)
    seen = jnp.zeros(num_concepts, jnp.int32).at[flat].max(1, mode="drop")
    return jnp.zeros(num_categories, jnp.int32).at[cats].max(seen)

  def update(state: LevelsState, acts: jax.Array, labels: jax.Array,
             raw: jax.Array | None = None) -> LevelsState:
    acts, labels = jnp.asarray(acts), jnp.asarray(labels)
    pixels = acts.shape[1] * acts.shape[2]

    def one(state, image):
      a, lab, r = image
      inner = conditional.ConditionalState(*state[:7])
      inner = cond.update(inner, a[None], lab[None], None if r is None else r[None])
      on = inner.above[0] - state.above[0]  # [U, T] this image's on-pixels per level
      cat = present(lab)
      return state._replace(
          **inner._asdict(),
          category_on=state.category_on + cat[:, None, None] * on[None],
          category_pixels=state.category_pixels + cat * pixels), None

    return jax.lax.scan(one, state, (acts, labels, raw))[0]

  def merge(a: LevelsState, b: LevelsState) -> LevelsState:
    inner = conditional.merge_conditional(conditional.ConditionalState(*a[:7]),
                                          conditional.ConditionalState(*b[:7]))
    return a._replace(**inner._asdict(), category_on=a.category_on + b.category_on,
                      category_pixels=a.category_pixels + b.category_pixels)

  return Stat(init, update, merge, None)


class Counts(NamedTuple):
  """Counts of each unit at one level (U units, K labels, C categories): `isect [K, U]` pixels
  on and labelled (row 0: all on-pixels), `label [K]` pixels per label (row 0: all pixels),
  `category_on [C, U]` on-pixels in images with the category, `category_pixels [C]`."""

  isect: np.ndarray
  label: np.ndarray
  category_on: np.ndarray
  category_pixels: np.ndarray


def counts_at(state: LevelsState, level: np.ndarray) -> Counts:
  """The counts at grid index `level [U]` of each unit (float64)."""
  units = np.arange(len(level))
  above = np.asarray(state.above, np.float64)[:, units, level]
  cat = np.asarray(state.category_on, np.float64)[:, units, level]
  return Counts(above, np.asarray(state.pixels, np.float64), cat,
                np.asarray(state.category_pixels, np.float64))


def iou_of(counts: Counts, label_category: Sequence[int], denominator: str) -> np.ndarray:
  """IoU `[U, K]` (column 0 zero). "plain": |on ∩ l| / |on ∪ l|. "category" (the original's):
  |on ∩ l| / (|on in images with l's category| + |l| - |on ∩ l| + 1e-20)."""
  ic, truth = counts.isect, counts.label[:, None]
  if denominator == "category":
    union = counts.category_on[np.asarray(label_category)] + truth - ic
    iou = ic / (union + 1e-20)
  else:
    union = ic[0][None] + truth - ic
    iou = np.where(union > 0, ic / np.maximum(union, 1.0), 0.0)
  iou = iou.T.copy()
  iou[:, 0] = 0.0
  return iou


def _plogp(x: np.ndarray) -> np.ndarray:
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.nan_to_num(x * np.log(x), nan=0.0)


def information_quality(arr: np.ndarray) -> np.ndarray:
  """MI / JE of 2x2 tables `arr [2, 2, ...]` of probabilities, 0 where undefined, as the
  original's `mutual_information` / `joint_entropy` (terms that are NaN count as 0)."""
  mi, je = _mi_je(arr)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.nan_to_num(mi / je, nan=0.0)


def label_iqr(counts: Counts, label_category: Sequence[int], denominator: str) -> np.ndarray:
  """IQR `[U, K]` of "on" against each label, as the original's `score_tally_stats`: the 2x2
  table of counts over the pixels of images with the label's category ("category"; all pixels
  for "plain")."""
  ic, truth = counts.isect, counts.label[:, None]
  if denominator == "category":
    cats = np.asarray(label_category)
    pred, total = counts.category_on[cats], counts.category_pixels[cats][:, None]
  else:
    pred, total = np.broadcast_to(ic[0], ic.shape), np.full((len(truth), 1), counts.label[0])
  union = pred + truth - ic
  arr = np.stack([np.stack([ic, pred - ic]), np.stack([truth - ic, total - union])])
  with np.errstate(divide="ignore", invalid="ignore"):
    arr = arr / total
  iqr = information_quality(arr).T.copy()
  iqr[:, 0] = 0.0
  return iqr


class IqrChoice(NamedTuple):
  """The original's IQR threshold choice: `level [U]` grid index, `label [U]`, `iqr [U]`."""

  level: np.ndarray
  label: np.ndarray
  iqr: np.ndarray


def iqr_choice(state: LevelsState, label_category: Sequence[int],
               denominator: str = "category") -> IqrChoice:
  """Per unit, the label and grid level of highest IQR, as the original's `collect_iqr`.

  truth = label fraction of all pixels; pred = fraction of pixels above the level in images with
  the label's category ("category"; of all pixels for "plain" or a single category); isect =
  P(above | label) * truth; the clamped 2x2 table gives MI / JE. MI is zeroed at the lowest level
  and for labels rarer than 1e-3; only levels with agreement (isect + both-off) > 0.8 and level
  > 0 count. Label 0 never wins (the original lets '-' compete; it never scores IoU).
  """
  above = np.asarray(state.above, np.float64)  # [K, U, T]
  count = np.maximum(np.asarray(state.count, np.float64), 1.0)[..., None]
  pixels = np.asarray(state.pixels, np.float64)
  edges = np.asarray(state.edges, np.float64)
  cats = np.asarray(label_category)
  truth = (pixels / max(pixels[0], 1.0))[:, None, None]
  cat_on = np.asarray(state.category_on, np.float64)
  cat_pixels = np.asarray(state.category_pixels, np.float64)
  if denominator == "category" and cat_on.shape[0] > 1:
    with np.errstate(divide="ignore", invalid="ignore"):
      preds = (cat_on / cat_pixels[:, None, None])[cats]
  else:
    preds = np.broadcast_to(above[0] / count[0], above.shape)
  isects = above / count * truth
  unions = truth + preds - isects
  arr = np.clip(np.stack([np.stack([isects, preds - isects]),
                          np.stack([truth - isects, 1 - unions])]), 0.0, 1.0)
  mi, je = _mi_je(arr)
  mi[:, :, 0] = 0.0  # the lowest level (the original's quantile 0: its grid runs downwards)
  mi[pixels / max(pixels[0], 1.0) < 1e-3] = 0.0
  with np.errstate(divide="ignore", invalid="ignore"):
    iqr = np.nan_to_num(mi / je, nan=0.0)
  agreement = isects + arr[1, 1]
  iqr[agreement <= 0.8] = 0.0
  iqr[:, edges <= 0.0] = 0.0
  iqr[0] = 0.0
  best = np.argmax(iqr, axis=2)  # [K, U]
  max_iqr = np.take_along_axis(iqr, best[..., None], axis=2)[..., 0]
  label = np.argmax(max_iqr, axis=0)
  units = np.arange(above.shape[1])
  return IqrChoice(best[label, units], label, max_iqr[label, units])


def _mi_je(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """MI and JE of 2x2 tables (as `information_quality`, apart)."""
  mi = 0.0
  with np.errstate(divide="ignore", invalid="ignore"):
    for j in range(2):
      for k in range(2):
        joint = arr[j, k]
        mi = mi + np.nan_to_num(joint * np.log(joint / (arr[j].sum(0) * arr[:, k].sum(0))),
                                nan=0.0)
  je = -sum(_plogp(arr[j, k]) for j in range(2) for k in range(2))
  return np.maximum(mi, 0.0), np.maximum(je, 0.0)
