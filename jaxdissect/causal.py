"""Average causal effects of interventions on concept pixels, for one edit or every unit at once.

IoU says a unit fires where a concept is; only an intervention says the unit makes it. The
average causal effect (ACE) of an edit on concept c is the mean over held-out z of the change in
c's pixel fraction when the edit is applied, with a 99% confidence interval from the paired
per-image differences. `single_unit_effects` measures the ablation of every unit of a layer on
every concept: the PNAS experiment the original runs as one sweep per unit, here as chunks of
units vmapped over a batch of counterfactual worlds; `ablation_curve` removes a ranking's top
1..k units (the paper's "removing trees" figure) the same way.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.model import Edit, Generator, Segmenter
from jaxdissect.stats.iou import multi_hot
from jaxdissect.zsample import z_batches

Z99 = 2.5758293035489004  # two-sided 99% normal quantile


class Effect(NamedTuple):
  """Mean concept pixel fractions without and with an edit, and their paired difference.

  Arrays are `[K]` for one edit or `[U, K]` for a sweep over units; `ci99` is the half-width of
  the 99% confidence interval of `delta` (normal approximation, 2.576 standard errors).
  """

  baseline: np.ndarray
  edited: np.ndarray
  delta: np.ndarray
  ci99: np.ndarray
  n: int


def concept_fractions(labels: jax.Array, num_concepts: int) -> jax.Array:
  """`[B, H, W, D]` labels -> `[B, K]` share of each image's pixels having concept c (any
  channel, once per pixel); column 0 is 0."""
  hot = multi_hot(labels, num_concepts).astype(jnp.float32)
  frac = jnp.mean(hot, axis=(1, 2))
  return frac.at[:, 0].set(0.0)


def _fractions_fn(gen: Generator, seg: Segmenter, layer: str) -> Callable:
  """`f(z, edit) -> [B, K]` concept fractions of the generated (and edited) images."""
  num_concepts = len(seg.concepts)

  def fractions(z, edit):
    edits = None if edit is None else {layer: edit}
    image, _ = gen.apply_fn(gen.params, z, edits, capture=())
    return concept_fractions(seg.label_fn(seg.params, image), num_concepts)

  return fractions


class _Moments:
  """Float64 running sums of paired per-image values (host side; exact enough for means)."""

  def __init__(self):
    self.n = 0
    self.base = self.edit = self.diff = self.diff2 = 0.0

  def add(self, base: np.ndarray, edit: np.ndarray) -> None:
    """base `[B, K]`, edit `[..., B, K]`: the batch axis is the one before the last."""
    base, edit = np.asarray(base, np.float64), np.asarray(edit, np.float64)
    diff = edit - base
    self.n += base.shape[0]
    self.base = self.base + base.sum(0)
    self.edit = self.edit + edit.sum(-2)
    self.diff = self.diff + diff.sum(-2)
    self.diff2 = self.diff2 + np.square(diff).sum(-2)

  def effect(self) -> Effect:
    n = max(self.n, 1)
    mean = self.diff / n
    var = np.maximum(self.diff2 / n - np.square(mean), 0.0) * n / max(n - 1, 1)
    base = np.broadcast_to(self.base / n, np.shape(mean))
    return Effect(baseline=np.array(base), edited=self.edit / n, delta=mean,
                  ci99=Z99 * np.sqrt(var / n), n=self.n)


def average_effect(gen: Generator, seg: Segmenter, layer: str, edit: Edit, *, n: int,
                   batch_size: int, seed: int, zdim: int) -> Effect:
  """ACE of `edit` on `layer` for every concept over the first n latents of sample `seed`."""
  fractions = jax.jit(_fractions_fn(gen, seg, layer))
  moments = _Moments()
  for _, z in z_batches(n, seed, batch_size, zdim):
    z = jnp.asarray(z)
    moments.add(fractions(z, None), fractions(z, edit))
  return moments.effect()


def _groups(edits: jax.Array, chunk: int) -> jax.Array:
  """`[E, ...]` edits as `[G, chunk, ...]` groups, the last padded by repeating the last edit,
  so that every group goes through one compiled function."""
  if chunk < 1:
    raise ValueError(f"chunk is {chunk}, expected a positive number of edits")
  chunk = min(chunk, edits.shape[0])
  padded = jnp.concatenate([edits, jnp.repeat(edits[-1:], -edits.shape[0] % chunk, axis=0)])
  return padded.reshape(-1, chunk, *edits.shape[1:])


def _over_groups(fn: Callable[[jax.Array], jax.Array], groups: jax.Array,
                 num_edits: int) -> np.ndarray:
  """`fn` on every group, results stacked along the edits and the padding dropped."""
  return np.concatenate([np.asarray(fn(g)) for g in groups])[:num_edits]


def edit_effects(gen: Generator, seg: Segmenter, layer: str, alphas: jax.Array, *, n: int,
                 batch_size: int, seed: int, zdim: int, values: jax.Array | None = None,
                 chunk: int = 16, on_batch: Callable[[int], None] | None = None) -> Effect:
  """Effects of E whole-layer edits at once: edit e sets unit u to `values[u]` with weight
  `alphas[e, u]` (`alphas [E, C]`; values default 0, i.e. ablation). Arrays are `[E, K]`.

  Edits go through the generator `chunk` at a time as a vmapped batch of counterfactual worlds,
  each chunk one call of one compiled function (the last chunk is padded).
  """
  alphas = jnp.asarray(alphas, jnp.float32)
  num_edits, num_units = alphas.shape
  fractions = _fractions_fn(gen, seg, layer)
  values = jnp.zeros((num_units,), jnp.float32) if values is None else jnp.asarray(values)
  groups = _groups(alphas, chunk)

  @jax.jit
  def sweep(z, group):
    return jax.vmap(lambda a: fractions(z, Edit(a, values)))(group)  # [chunk, B, K]

  base_fn = jax.jit(lambda z: fractions(z, None))
  moments = _Moments()
  for _, z in z_batches(n, seed, batch_size, zdim):
    z = jnp.asarray(z)
    edited = _over_groups(lambda g: sweep(z, g), groups, num_edits)
    moments.add(base_fn(z), edited)
    if on_batch is not None:
      on_batch(z.shape[0])
  return moments.effect()


def single_unit_effects(gen: Generator, seg: Segmenter, layer: str, num_units: int, *, n: int,
                        batch_size: int, seed: int, zdim: int, chunk: int = 16,
                        values: jax.Array | None = None,
                        on_batch: Callable[[int], None] | None = None) -> Effect:
  """The effect of setting each unit of `layer` alone to `values` (default 0: ablation),
  everywhere, on every concept: arrays `[U, K]`."""
  return edit_effects(gen, seg, layer, jnp.eye(num_units), n=n, batch_size=batch_size,
                      seed=seed, zdim=zdim, values=values, chunk=chunk, on_batch=on_batch)


def ablation_curve(gen: Generator, seg: Segmenter, layer: str, order: np.ndarray,
                   num_units: int, *, max_units: int, n: int, batch_size: int, seed: int,
                   zdim: int, chunk: int = 8, alpha: np.ndarray | None = None,
                   on_batch: Callable[[int], None] | None = None) -> Effect:
  """Effects of ablating the first k units of `order`, for k = 0..max_units: arrays `[k + 1, K]`.

  `alpha` (`[C]`, optional) ablates each unit with that weight instead of 1 (learned sets).
  """
  order = np.asarray(order)[:max_units]
  weights = np.ones(num_units, np.float32) if alpha is None else np.asarray(alpha, np.float32)
  alphas = np.zeros((len(order) + 1, num_units), np.float32)
  for k, unit in enumerate(order):
    alphas[k + 1:, unit] = weights[unit]
  return edit_effects(gen, seg, layer, alphas, n=n, batch_size=batch_size, seed=seed, zdim=zdim,
                      chunk=chunk, on_batch=on_batch)


def removed_fraction(effect: Effect, concept: int) -> tuple[np.ndarray, np.ndarray]:
  """Share of the concept's pixels removed (-delta / baseline) and its 99% CI half-width."""
  base = np.asarray(effect.baseline)[..., concept]
  base = np.where(base > 0, base, np.nan)
  return -np.asarray(effect.delta)[..., concept] / base, np.asarray(effect.ci99)[..., concept] / base


class Context(NamedTuple):
  """Concept area added by an insertion, tabulated by the concept already at the spot (`[K]`).

  `mean[l]` is the average change of the target concept's pixel fraction when the units are
  inserted at a featuremap cell whose centre pixel carries label l (any channel), `ci99` its
  99% half-width, `count[l]` the (image, cell) pairs behind it (row 0 unused).
  """

  mean: np.ndarray
  ci99: np.ndarray
  count: np.ndarray


def insertion_context(gen: Generator, seg: Segmenter, layer: str, alpha: jax.Array,
                      values: jax.Array, concept: int, shape: tuple[int, int], *, n: int,
                      batch_size: int, seed: int, zdim: int, chunk: int = 16,
                      on_batch: Callable[[int], None] | None = None) -> Context:
  """Inserts units (`alpha [C]` weights, `values [C]` levels) at one featuremap cell at a time,
  every cell of `shape` (h, w), on n images; tabulates the added area of `concept` by the label
  at the cell's centre pixel in the unedited image (the paper's "doors appear on buildings")."""
  h, w = shape
  num_concepts = len(seg.concepts)
  cells = jnp.eye(h * w, dtype=jnp.float32).reshape(h * w, h, w, 1)
  alpha = jnp.asarray(alpha, jnp.float32)
  values = jnp.asarray(values, jnp.float32)
  fractions = _fractions_fn(gen, seg, layer)
  groups = _groups(cells, chunk)

  @jax.jit
  def edited(z, group):
    return jax.vmap(lambda m: fractions(z, Edit(m * alpha, values)))(group)[..., concept]

  @jax.jit
  def base(z):
    image, _ = gen.apply_fn(gen.params, z, capture=())
    labels = seg.label_fn(seg.params, image)
    return concept_fractions(labels, num_concepts)[:, concept], labels

  total = np.zeros(num_concepts)
  total2 = np.zeros(num_concepts)
  count = np.zeros(num_concepts)
  for _, z in z_batches(n, seed, batch_size, zdim):
    z = jnp.asarray(z)
    before, labels = base(z)
    after = _over_groups(lambda g: edited(z, g), groups, h * w)  # [hw, B]
    delta = after - np.asarray(before)[None]
    labels = np.asarray(labels)
    sy, sx = labels.shape[1] // h, labels.shape[2] // w
    centre = labels[:, sy // 2::sy, sx // 2::sx][:, :h, :w]  # [B, h, w, D]
    centre = centre.reshape(labels.shape[0], h * w, -1).transpose(1, 0, 2)  # [hw, B, D]
    hot = np.zeros((h * w, labels.shape[0], num_concepts), bool)
    for d in range(centre.shape[-1]):
      np.put_along_axis(hot, np.clip(centre[..., d:d + 1], 0, num_concepts - 1), True, axis=-1)
    hot[..., 0] = False
    total += np.einsum("eb,ebk->k", delta, hot)
    total2 += np.einsum("eb,ebk->k", np.square(delta), hot)
    count += hot.sum((0, 1))
    if on_batch is not None:
      on_batch(z.shape[0])
  safe = np.maximum(count, 1)
  mean = total / safe
  var = np.maximum(total2 / safe - np.square(mean), 0.0) * safe / np.maximum(safe - 1, 1)
  return Context(mean=np.where(count > 0, mean, np.nan), ci99=Z99 * np.sqrt(var / safe),
                 count=count.astype(np.int64))
