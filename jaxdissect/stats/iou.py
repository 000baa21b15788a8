"""IoU and IQR tallies between thresholded unit activations and segmentation concepts.

This is the counting core of dissection: a unit u is "on" at a pixel when its (upsampled)
activation exceeds the unit's threshold, a pixel "has" concept c when any label channel carries c,
and every score (IoU, information quality ratio) is a function of a handful of integer counts
summed over all images. Tallying exact int32 counts, rather than running float means, makes the
result independent of batching and sharding, bit for bit.

Conventions:
  * Labels are `[B, H, W, D]` integers in `[0, K)`; 0 means "no concept" and column 0 of every
    per-concept count is zero (except `images_with[0]`, see `IouState`).
  * Label values outside `[0, K)` cannot be checked without leaving `jit`, so they are counted in
    `bad_labels` and otherwise ignored (they carry no concept); callers should report a
    non-zero count.
  * Non-finite activations are counted per unit in `nonfinite` and are never "on".
  * Counts are int32: a tally holds at most 2**31 - 1 pixels (e.g. 10000 images at 256x256 is
    6.6e8). Per batch the intersection is a float32 matmul, exact while B*H*W <= 2**24; larger
    batches raise ValueError.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.errors import check_shape
from jaxdissect.stats.base import Stat

# Largest number of pixels per batch for which float32 sums of 0/1 values are exact.
MAX_BATCH_PIXELS = 2**24


class IouState(NamedTuple):
  """Integer tallies (U units, K label values, G categories).

  Attributes:
    intersection: `[U, K]` int32, pixels where u is on and the pixel has c (column 0 is 0).
    active: `[U]` int32, pixels where u is on.
    concept: `[K]` int32, pixels having c, once per pixel even if several channels carry c.
    pixels: `[]` int32, all pixels seen.
    images: `[]` int32, all images seen.
    images_with: `[K]` int32, images in which some channel of some pixel equals c (here c = 0
      counts too, as in the original's category-presence rule).
    category_of: `[K]` int32, the category of each label value (constant configuration).
    category_active: `[U, G]` int32, on pixels of u summed over images where category g occurs.
    category_pixels: `[G]` int32, pixels summed over images where category g occurs.
    nonfinite: `[U]` int32, non-finite activations seen (treated as off).
    bad_labels: `[]` int32, label entries outside `[0, K)` (ignored).
  """

  intersection: jax.Array
  active: jax.Array
  concept: jax.Array
  pixels: jax.Array
  images: jax.Array
  images_with: jax.Array
  category_of: jax.Array
  category_active: jax.Array
  category_pixels: jax.Array
  nonfinite: jax.Array
  bad_labels: jax.Array


def check_labels(labels: jax.Array, spatial: Sequence[int]) -> None:
  """Raises ValueError unless `labels` is an integer `[B, H, W, D]` matching `spatial` (B, H, W)."""
  if labels.ndim != 4:
    raise ValueError(f"labels has shape {list(labels.shape)}, expected [B, H, W, D]")
  check_shape("labels", labels.shape, (*spatial, None))
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels has dtype {labels.dtype}, expected an integer dtype")


def count_bad_labels(labels: jax.Array, num_concepts: int) -> jax.Array:
  """Number of label entries outside `[0, num_concepts)`, as an int32 scalar."""
  return jnp.sum((labels < 0) | (labels >= num_concepts), dtype=jnp.int32)


def multi_hot(labels: jax.Array, num_concepts: int) -> jax.Array:
  """`[..., D]` integer labels -> `[..., K]` bool, True where any channel equals c."""
  values = jnp.arange(num_concepts, dtype=labels.dtype)
  hot = jnp.zeros((*labels.shape[:-1], num_concepts), bool)
  for d in range(labels.shape[-1]):
    hot = hot | (labels[..., d, None] == values)
  return hot


def _on_counts(acts: jax.Array, thresholds: jax.Array,
               columns: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Counts of "unit on" (`acts` `[P, U]` finite and above `thresholds` `[U]`) against 0/1
  `columns` `[P, C]`: `[U, C]` int32 co-occurrences (exact for any P) and the `[U]` int32
  non-finite activations.

  Both ways count 0/1 products with float32 matmuls over pixel blocks (exact below 2**24 per
  block) summed in int32, so they agree bit for bit. On the CPU the thresholding runs block by
  block inside a loop, so the `[P, U]` indicator never leaves the cache (materialising it costs
  more than the matmul), and non-finite values, which are rare, are only counted when a block
  flags one (XLA's CPU reduction over the pixel axis costs several times the matmul). Elsewhere
  one batched matmul over all blocks keeps the accelerator busy.
  """
  return jax.lax.platform_dependent(acts, thresholds, columns, cpu=_on_counts_looped,
                                    default=_on_counts_batched)


def _on(acts: jax.Array, thresholds: jax.Array) -> jax.Array:
  """0/1 float32 "on" indicator: above the threshold and finite (NaN compares False)."""
  return ((acts > thresholds) & (acts < jnp.inf)).astype(jnp.float32)


def _nonfinite(acts: jax.Array) -> jax.Array:
  return jnp.sum(~jnp.isfinite(acts), axis=0, dtype=jnp.int32)


def _block_counts(on: jax.Array, columns: jax.Array) -> jax.Array:
  """`[p, U]` by `[p, C]` 0/1 -> `[U, C]` int32, the narrow operand on the left as XLA's CPU dot
  prefers."""
  prod = jnp.dot(columns.astype(jnp.float32).T, on, precision=jax.lax.Precision.HIGHEST,
                 preferred_element_type=jnp.float32)
  return prod.astype(jnp.int32).T


def _on_counts_looped(acts, thresholds, columns, block: int = 1024):
  rows = acts.shape[0]
  block = min(block, rows)
  steps = rows // block

  def counts(a, c):
    return _block_counts(_on(a, thresholds), c), ~jnp.all(jnp.isfinite(a))

  def body(i, carry):
    start = i * block
    total, flag = counts(jax.lax.dynamic_slice_in_dim(acts, start, block),
                         jax.lax.dynamic_slice_in_dim(columns, start, block))
    return carry[0] + total, carry[1] | flag

  # The first block starts the carry, so it has the inputs' type also inside `shard_map`.
  carry = jax.lax.fori_loop(1, steps, body, counts(acts[:block], columns[:block]))
  total, flag = carry
  if rows > steps * block:
    tail, tail_flag = counts(acts[steps * block:], columns[steps * block:])
    total, flag = total + tail, flag | tail_flag
  nonfinite = jax.lax.cond(flag, lambda: _nonfinite(acts), lambda: jnp.zeros_like(total[:, 0]))
  return total, nonfinite


def _on_counts_batched(acts, thresholds, columns, block_rows: int = 16384):
  rows = acts.shape[0]
  blocks = _largest_divisor_at_most(rows, max(1, rows // block_rows))
  prod = jnp.einsum(
      "cpy,cpx->cyx",
      columns.astype(jnp.float32).reshape(blocks, rows // blocks, -1),
      _on(acts, thresholds).reshape(blocks, rows // blocks, -1),
      precision=jax.lax.Precision.HIGHEST,
      preferred_element_type=jnp.float32,
  )
  return prod.astype(jnp.int32).sum(axis=0).T, _nonfinite(acts)


def _largest_divisor_at_most(n: int, limit: int) -> int:
  return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _category_onehot(category_of: np.ndarray, num_categories: int) -> jax.Array:
  """`[K]` category ids -> `[K, G]` bool membership matrix."""
  return jnp.asarray(category_of[:, None] == np.arange(num_categories)[None, :])


def _batch_tally(
    acts: jax.Array,
    thresholds: jax.Array,
    labels: jax.Array,
    category_of: jax.Array,
    cat_onehot: jax.Array,
) -> IouState:
  """The tallies of one batch: acts `[B, H, W, U]`, thresholds `[U]`, labels `[B, H, W, D]`."""
  b, h, w, num_units = acts.shape
  num_concepts, num_categories = cat_onehot.shape
  acts = acts.reshape(b * h * w, num_units)
  has = multi_hot(labels.reshape(b, h * w, -1), num_concepts)  # [B, HW, K]
  has_concept = has & (jnp.arange(num_concepts) > 0)
  present = jnp.any(has, axis=1)  # [B, K], label 0 included (category presence rule)
  cat_present = jnp.any(present[:, :, None] & cat_onehot, axis=1)  # [B, G]
  # One pass over the big [P, U] indicator: concepts, an all-ones column (active pixels) and the
  # categories present in each pixel's image share a single matmul.
  columns = jnp.concatenate([
      has_concept,
      jnp.ones((b, h * w, 1), bool),
      jnp.broadcast_to(cat_present[:, None, :], (b, h * w, num_categories)),
  ], axis=-1).reshape(b * h * w, -1)
  counts, nonfinite = _on_counts(acts, thresholds, columns)  # [U, K + 1 + G], [U]
  return IouState(
      intersection=counts[:, :num_concepts],
      active=counts[:, num_concepts],
      concept=jnp.sum(has_concept, axis=(0, 1), dtype=jnp.int32),
      pixels=jnp.asarray(b * h * w, jnp.int32),
      images=jnp.asarray(b, jnp.int32),
      images_with=jnp.sum(present, axis=0, dtype=jnp.int32),
      category_of=category_of,
      category_active=counts[:, num_concepts + 1:],
      category_pixels=h * w * jnp.sum(cat_present, axis=0, dtype=jnp.int32),
      nonfinite=nonfinite,
      bad_labels=count_bad_labels(labels, num_concepts),
  )


def iou_tally(
    num_units: int,
    num_concepts: int,
    concept_categories: Sequence[int] | None = None,
) -> Stat:
  """Tallies for IoU/IQR of thresholded activations against multi-channel labels.

  Args:
    num_units: U, the number of units (channels) of the layer.
    num_concepts: K, label values are in `[0, K)`, 0 meaning none.
    concept_categories: optional `[K]` category id of each label value (e.g. object=0,
      part=1, ...), used only by the category-restricted scores; default: one category.

  Returns:
    A `Stat`: update(state, acts [B, H, W, U], thresholds [U], labels [B, H, W, D]) -> state;
    result(state) -> `iou_scores(state)`.
  """
  if num_units < 1 or num_concepts < 1:
    raise ValueError(
        f"iou_tally needs num_units >= 1 and num_concepts >= 1, got {num_units}, {num_concepts}"
    )
  if concept_categories is None:
    category_of = np.zeros((num_concepts,), np.int32)
  else:
    category_of = np.asarray(concept_categories, np.int32)
    check_shape("concept_categories", category_of.shape, (num_concepts,))
    if category_of.min() < 0:
      raise ValueError(f"concept_categories must be >= 0, got min {category_of.min()}")
  num_categories = int(category_of.max()) + 1
  cat_onehot = _category_onehot(category_of, num_categories)

  def init() -> IouState:
    zeros = lambda *shape: jnp.zeros(shape, jnp.int32)
    return IouState(
        intersection=zeros(num_units, num_concepts),
        active=zeros(num_units),
        concept=zeros(num_concepts),
        pixels=zeros(),
        images=zeros(),
        images_with=zeros(num_concepts),
        category_of=jnp.asarray(category_of),
        category_active=zeros(num_units, num_categories),
        category_pixels=zeros(num_categories),
        nonfinite=zeros(num_units),
        bad_labels=zeros(),
    )

  def update(
      state: IouState, acts: jax.Array, thresholds: jax.Array, labels: jax.Array
  ) -> IouState:
    acts, thresholds, labels = map(jnp.asarray, (acts, thresholds, labels))
    check_shape("acts", acts.shape, (None, None, None, num_units))
    check_shape("thresholds", thresholds.shape, (num_units,))
    check_labels(labels, acts.shape[:3])
    num_pixels = acts.shape[0] * acts.shape[1] * acts.shape[2]
    if num_pixels > MAX_BATCH_PIXELS:
      raise ValueError(
          f"acts has shape {list(acts.shape)}: {num_pixels} pixels per batch, expected at most "
          f"{MAX_BATCH_PIXELS} (float32 counts stop being exact); split the batch"
      )
    return merge(state, _batch_tally(acts, thresholds, labels, state.category_of, cat_onehot))

  def merge(a: IouState, b: IouState) -> IouState:
    summed = jax.tree.map(jnp.add, a, b)
    return summed._replace(category_of=a.category_of)

  return Stat(init, update, merge, iou_scores)


def _tables(state: IouState, by_category: bool) -> tuple[np.ndarray, ...]:
  """Host float64 counts (I [U, K], A [U, K], S [1, K], N [1, K]) for the score formulas."""
  inter = np.asarray(state.intersection, np.float64)
  concept = np.asarray(state.concept, np.float64)[None, :]
  if by_category:
    cat = np.asarray(state.category_of)
    active = np.asarray(state.category_active, np.float64)[:, cat]
    total = np.asarray(state.category_pixels, np.float64)[cat][None, :]
  else:
    active = np.broadcast_to(np.asarray(state.active, np.float64)[:, None], inter.shape)
    total = np.full_like(concept, float(state.pixels))
  return inter, active, concept, total


def iou_scores(state: IouState, by_category: bool = False) -> np.ndarray:
  """IoU `[U, K]` float64 = I / (A + S - I), 0 where the union is empty.

  With `by_category`, A counts only the unit's on pixels in images where the concept's category
  occurs (the GAN Dissection variant); otherwise A counts all on pixels (the PNAS variant).
  """
  inter, active, concept, _ = _tables(state, by_category)
  union = active + concept - inter
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(union > 0, inter / union, 0.0)


def plogp(p: np.ndarray) -> np.ndarray:
  """Elementwise -p log p with 0 log 0 = 0."""
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def iqr_scores(state: IouState, by_category: bool = False) -> np.ndarray:
  """Information quality ratio `[U, K]` float64 of "u on" versus "pixel has c".

  Over N pixels, the 2x2 table of probabilities is
    p11 = I/N, p10 = (A - I)/N, p01 = (S - I)/N, p00 = (N - A - S + I)/N.
  With H(x) = -sum x log x (0 log 0 = 0): JE = H(p11, p10, p01, p00),
  MI = H(A/N, 1 - A/N) + H(S/N, 1 - S/N) - JE, both clamped >= 0, and IQR = MI / JE with NaN
  (empty table or JE = 0) mapped to 0. With `by_category`, N and A are restricted to images where
  the concept's category occurs (as in GAN Dissection); otherwise N is all pixels.
  """
  inter, active, concept, total = _tables(state, by_category)
  with np.errstate(divide="ignore", invalid="ignore"):
    cells = [inter, active - inter, concept - inter, total - active - concept + inter]
    joint = sum(plogp(c / total) for c in cells)
    p_on, p_has = active / total, concept / total
    h_on = plogp(p_on) + plogp(1 - p_on)
    h_has = plogp(p_has) + plogp(1 - p_has)
    mi = np.maximum(h_on + h_has - joint, 0.0)
    joint = np.maximum(joint, 0.0)
    ratio = mi / joint
  return np.nan_to_num(ratio, nan=0.0, posinf=0.0, neginf=0.0)
