"""One-pass dissection of several layers: thresholds, IoU, labels and top images per unit.

The original runs the generator and segmenter two or three times over the sample: once for the
quantiles that set each unit's threshold, again to count IoU at that threshold (and a third time
for IQR thresholds). Here the first `warmup` images predict, for each unit, a narrow bracket of
values that will hold its threshold; then a single pass tallies fine per-concept histograms over
that bracket (`stats.tail`), from which the exact-quantile threshold and every IoU are read off at
the end, with hard error bounds. Units whose bound is wider than `iou_tolerance` (the warmup was
unlucky) get a narrower bracket and another pass; usually none do.

With `threshold="iqr"` the pass instead tallies per-concept CDFs on a grid of 100 levels per unit
(the warmup's quantiles at 1 - logspace(-3, 0, 100), GAN Dissection's grid) and picks the level
that maximises the information quality ratio; IoU at a grid level is an exact count.

The state is a pytree of fixed-size integer tallies, so it checkpoints, resumes and merges, and
memory does not grow with n. Driving the loop (progress, checkpoints) is the caller's job through
`start`, `step_fn`, `finish`, or all at once through `dissect`.

Given a `mesh` (see `jaxdissect.sharding`), each batch is split over its `data` axis: every device
generates, segments and tallies its own images into its own copy of the state (leaves stacked
`[devices, ...]`), and the copies are merged with collectives only when results or a checkpoint
need them (`gather_state`). Counts are integers and top-k ranks by (value, global index), so the
results equal a single device's exactly, given models that compute each image alike in calls of
any size (else see `Config.forward_chunk`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdissect import sharding
from jaxdissect.errors import check_choice
from jaxdissect.model import Generator, Segmenter
from jaxdissect.stats import conditional, tail
from jaxdissect.stats.topk import largest_values, topk as topk_stat
from jaxdissect.upsample import upsample
from jaxdissect.zsample import z_batches

IQR_LEVELS = 1.0 - np.logspace(-3, 0, 100)[::-1]  # ascending quantile levels of the IQR grid


class Config(NamedTuple):
  """What to dissect and how. `threshold` is q (a unit is on in its top q) or "iqr".

  `forward_chunk`: images per generator and segmenter call (0: a device's whole share of a
  batch). Convolutions may round differently for different batch shapes (XLA's CPU ones do), so
  runs on different device counts are bit-identical when it divides every device's share.

  `warmup_on`: where the quantile warmup finds its order statistics: "host" (numpy partitions the
  upsampled activations, fastest on a CPU), "device" (a running `top_k` on the accelerator, so
  only `[U, 3qN]` values leave it) or "auto" (device unless the backend is the CPU). Both give
  the same brackets; IQR thresholds always use the host.
  """

  layers: tuple[str, ...]
  n: int
  zdim: int
  batch_size: int = 100
  seed: int = 1
  threshold: float | str = 0.01
  topk: int = 10
  num_bins: int = 2048
  warmup: int = 100
  iou_tolerance: float = 1e-3
  max_passes: int = 3
  tally_chunk: int = 10
  forward_chunk: int = 0
  warmup_on: str = "auto"


class Shapes(NamedTuple):
  """Static shapes of a run: featuremap `[H, W, C]` per layer, label size and label depth."""

  layers: dict[str, tuple[int, int, int]]
  seg_size: tuple[int, int]
  label_depth: int
  image: tuple[int, int, int]


class State(NamedTuple):
  """Running state of a pass: per-layer tallies plus progress counters (all arrays).

  `stats[layer]` is a `TailState` (quantile thresholds) or a `ConditionalState` (IQR);
  `tops[layer]` the per-unit top-k of per-image maxima; `images` how many images of this pass
  are tallied; `passes` how many passes were finished before this one.
  """

  stats: dict[str, Any]
  tops: dict[str, Any]
  images: jax.Array
  passes: jax.Array


class LayerResult(NamedTuple):
  """Dissection of one layer (U units, K label values, k top images).

  `iou_bound` is the largest possible error of any IoU of the unit (0 for exact counts);
  `iqr` is the IQR of the label (IQR mode only, else zeros).
  """

  layer: str
  shape: tuple[int, int, int]
  thresholds: np.ndarray
  iou: np.ndarray
  label: np.ndarray
  best_iou: np.ndarray
  iou_bound: np.ndarray
  iqr: np.ndarray
  top_values: np.ndarray
  top_indices: np.ndarray


def check_config(config: Config, gen: Generator) -> None:
  """Raises ValueError naming the bad setting and what would be valid."""
  if not config.layers:
    raise ValueError(f"no layers given; valid layers are: {', '.join(gen.layers)}")
  for layer in config.layers:
    check_choice("layer", layer, gen.layers)
  if len(set(config.layers)) != len(config.layers):
    raise ValueError(f"layers {list(config.layers)} name a layer twice")
  t = config.threshold
  if isinstance(t, str):
    if t != "iqr":
      raise ValueError(f"threshold {t!r} is neither a number in (0, 1) nor 'iqr'")
  elif not 0.0 < float(t) < 1.0:
    raise ValueError(f"threshold {t} is out of range; give a top fraction q with 0 < q < 1, "
                     "e.g. 0.01, or 'iqr'")
  for name, value, least in (("n", config.n, 1), ("batch_size", config.batch_size, 1),
                             ("topk", config.topk, 1), ("num_bins", config.num_bins, 1),
                             ("warmup", config.warmup, 1), ("max_passes", config.max_passes, 1),
                             ("tally_chunk", config.tally_chunk, 1),
                             ("forward_chunk", config.forward_chunk, 0)):
    if value < least:
      raise ValueError(f"{name} is {value}, expected an integer >= {least}")


def infer_shapes(gen: Generator, seg: Segmenter, config: Config) -> Shapes:
  """Shapes of the run from an abstract evaluation; raises ValueError when the models disagree."""
  z = jax.ShapeDtypeStruct((1, config.zdim), jnp.float32)
  try:
    image, acts = jax.eval_shape(lambda z: gen.apply_fn(gen.params, z, capture=config.layers), z)
  except Exception as e:  # a wrong zdim surfaces as a shape error somewhere inside the model
    raise ValueError(f"generator does not accept z of shape [1, {config.zdim}]: {e}") from e
  try:
    labels = jax.eval_shape(lambda x: seg.label_fn(seg.params, x), image)
  except Exception as e:
    raise ValueError(f"segmenter cannot label the generator's images of shape "
                     f"{list(image.shape[1:])}: {e}") from e
  seg_size = tuple(labels.shape[1:3])
  layers = {}
  for layer in config.layers:
    h, w, c = acts[layer].shape[1:]
    if h > seg_size[0] or w > seg_size[1]:
      raise ValueError(f"layer {layer} is {h}x{w}, larger than the segmentation {seg_size[0]}x"
                       f"{seg_size[1]}; its activations cannot be upsampled to the labels. "
                       "Use a segmenter with at least the layer's resolution or a smaller layer")
    layers[layer] = (h, w, c)
  return Shapes(layers, seg_size, labels.shape[3], tuple(image.shape[1:]))


def forward_fn(gen: Generator, seg: Segmenter, layers: Sequence[str], chunk: int = 0) -> Callable:
  """`f(z) -> (acts {layer: [B, h, w, C]}, labels [B, H, W, D])`, not jitted.

  `chunk` > 0 runs the models on `gcd(B, chunk)` images at a time (a `lax.map`), so the numbers
  of an image do not depend on how many images share its call.
  """
  layers = tuple(layers)

  def forward(z):
    image, acts = gen.apply_fn(gen.params, z, capture=layers)
    return acts, seg.label_fn(seg.params, image)

  return in_chunks(forward, chunk)


def in_chunks(fn: Callable, chunk: int) -> Callable:
  """`fn` over a batch, applied `gcd(B, chunk)` rows at a time (as is when chunk is 0)."""
  if not chunk:
    return fn

  def chunked(z):
    size = math.gcd(z.shape[0], chunk)
    if size == z.shape[0]:
      return fn(z)
    out = jax.lax.map(fn, z.reshape(z.shape[0] // size, size, *z.shape[1:]))
    return jax.tree.map(lambda x: x.reshape(z.shape[0], *x.shape[2:]), out)

  return chunked


def _stat(config: Config, num_concepts: int, units: int, bracket: Any):
  if config.threshold == "iqr":
    return conditional.conditional_histogram(units, num_concepts, bracket)
  lo, hi = bracket
  return tail.tail_histogram(units, num_concepts, lo, hi, config.num_bins)


def init_state(config: Config, shapes: Shapes, num_concepts: int, brackets: dict[str, Any],
               passes: int = 0) -> State:
  """A fresh state for a pass with the given per-layer brackets (see `warmup_brackets`)."""
  stats = {layer: _stat(config, num_concepts, shapes.layers[layer][2], brackets[layer]).init()
           for layer in config.layers}
  tops = {layer: topk_stat(shapes.layers[layer][2], config.topk).init()
          for layer in config.layers}
  return State(stats, tops, jnp.zeros((), jnp.int32), jnp.asarray(passes, jnp.int32))


def brackets_of(state: State, config: Config) -> dict[str, Any]:
  """The brackets a state was built on (to rebuild its `Stat`s, e.g. after loading)."""
  if config.threshold == "iqr":
    return {layer: np.asarray(s.edges) for layer, s in state.stats.items()}
  num_bins = config.num_bins
  return {layer: (np.asarray(s.lo), np.asarray(s.lo) + np.asarray(s.width) * num_bins)
          for layer, s in state.stats.items()}


def tally_fn(config: Config, shapes: Shapes, num_concepts: int) -> Callable:
  """`tally(state, acts, labels, start) -> state`: adds one batch (pure, to be jitted).

  The per-pixel work runs over chunks of `config.tally_chunk` images in a `lax.scan`, so the
  upsampled maps of a chunk stay in cache instead of streaming a whole batch through memory
  (1.6x faster on CPU for the scene GAN's 8x8x128 layer at 64x64).
  """
  seg_size = shapes.seg_size
  updates = {layer: _update_only(config, num_concepts, shapes.layers[layer][2])
             for layer in config.layers}

  def tally_chunk(stats, chunk):
    acts, labels = chunk
    out = {}
    for layer in config.layers:
      a = acts[layer].astype(jnp.float32)
      extra = () if config.threshold == "iqr" else (a,)
      out[layer] = updates[layer](stats[layer], upsample(a, seg_size), labels, *extra)
    return out, None

  def tally(state: State, acts: dict[str, jax.Array], labels: jax.Array, start) -> State:
    batch = labels.shape[0]
    size = math.gcd(batch, config.tally_chunk)
    split = lambda x: x.reshape(batch // size, size, *x.shape[1:])
    chunks = ({layer: split(acts[layer]) for layer in config.layers}, split(labels))
    stats, _ = jax.lax.scan(tally_chunk, state.stats, chunks)
    index = start + jnp.arange(batch, dtype=jnp.int32)
    tops = {}
    for layer in config.layers:
      peaks = jnp.max(acts[layer].astype(jnp.float32), axis=(1, 2))
      units = shapes.layers[layer][2]
      tops[layer] = topk_stat(units, config.topk).update(state.tops[layer], peaks, index)
    return State(stats, tops, state.images + batch, state.passes)

  return tally


def _placeholder_bracket(config: Config, units: int) -> Any:
  """A valid bracket of the right shape, for stats whose real bracket lives in their state."""
  if config.threshold == "iqr":
    return np.zeros((units, len(IQR_LEVELS)), np.float32)
  return np.zeros(units, np.float32), np.ones(units, np.float32)


def _update_only(config: Config, num_concepts: int, units: int) -> Callable:
  """The update function of the layer's stat, independent of its brackets."""
  return _stat(config, num_concepts, units, _placeholder_bracket(config, units)).update


def step_fn(gen: Generator, seg: Segmenter, config: Config, shapes: Shapes) -> Callable:
  """Jitted `step(state, z, start) -> state`: generate, segment and tally one batch."""
  forward = forward_fn(gen, seg, config.layers, config.forward_chunk)
  tally = tally_fn(config, shapes, len(seg.concepts))

  @jax.jit
  def step(state, z, start):
    acts, labels = forward(z)
    return tally(state, acts, labels, start)

  return step


def warmup_brackets(config: Config, shapes: Shapes,
                    batches: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
  """Per-layer brackets predicted from the warmup batches' raw activations.

  Quantile mode: `(lo, hi)` per unit, the warmup's order statistics at 3q and q/3 from the top
  (a warmup quantile shared by many pixels, such as a ReLU's zero, becomes lo itself, so the
  threshold lands on the point mass and is exact). IQR mode: `[U, 100]` grid of the warmup's
  quantiles at IQR_LEVELS.
  """
  brackets = {}
  up = jax.jit(lambda a: upsample(a.astype(jnp.float32), shapes.seg_size))
  for layer in config.layers:
    units = shapes.layers[layer][2]
    # [U, pixels] rows: numpy partitions contiguous rows several times faster than columns.
    values = [np.ascontiguousarray(np.asarray(up(acts[layer])).reshape(-1, units).T)
              for acts in batches]
    finite = np.all([np.all(np.isfinite(v), axis=1) for v in values], axis=0)
    if not finite.all():
      bad = np.nonzero(~finite)[0]
      raise FloatingPointError(f"{layer}: non-finite activations in units {bad[:10].tolist()}; "
                               "dissection needs finite ones")
    if config.threshold == "iqr":
      brackets[layer] = _grid(np.concatenate(values, axis=1), config.seed).astype(np.float32)
    else:
      brackets[layer] = _tail_bracket(values, float(config.threshold))
  return brackets


def _grid(values: np.ndarray, seed: int, cap: int = 200_000) -> np.ndarray:
  """`[U, 100]` quantiles at IQR_LEVELS of `[U, N]` values (a fixed subsample of at most cap)."""
  if values.shape[1] > cap:
    cols = np.random.RandomState(seed).choice(values.shape[1], cap, replace=False)
    values = values[:, np.sort(cols)]
  grid = np.quantile(values, IQR_LEVELS, axis=1).T
  return np.maximum.accumulate(grid, axis=1)


def _tail_ranks(total: int, q: float) -> tuple[int, int, int]:
  """1-based ranks from the top of the q-quantile, the bracket's low end and its high end."""
  rank_q = max(1, int(round(q * total)))
  return rank_q, min(total, 3 * rank_q), max(1, rank_q // 3)


def _tail_bracket(values: list[np.ndarray], q: float) -> tuple[np.ndarray, np.ndarray]:
  """`(lo, hi)` from `[U, N_i]` batches of values (see `warmup_brackets`)."""
  total = sum(v.shape[1] for v in values)
  return _bracket_of_largest(largest_values(values, _tail_ranks(total, q)[1]), total, q)


def _bracket_of_largest(kept: np.ndarray, total: int, q: float
                        ) -> tuple[np.ndarray, np.ndarray]:
  """`(lo, hi)` from each unit's `3qN` largest of N values `[U, 3qN]` (in any order)."""
  rank_q, rank_lo, rank_hi = _tail_ranks(total, q)
  top = np.sort(kept, axis=1)[:, ::-1]  # descending: top[:, r - 1] has rank r
  at_q = top[:, rank_q - 1]
  lo = top[:, rank_lo - 1]
  tied = np.sum(kept == at_q[:, None], axis=1) > max(1, rank_q // 10)
  lo = np.where(tied, at_q, lo)
  hi = np.maximum(top[:, rank_hi - 1], lo)
  return lo.astype(np.float32), hi.astype(np.float32)


def layer_results(config: Config, shapes: Shapes, state: State
                  ) -> tuple[dict[str, LayerResult], dict[str, Any]]:
  """Results per layer, and refined brackets for the layers that need another pass."""
  results, refine = {}, {}
  for layer in config.layers:
    stat = state.stats[layer]
    nonfinite = np.asarray(stat.nonfinite)
    if nonfinite.any():
      bad = np.nonzero(nonfinite)[0]
      raise FloatingPointError(f"{layer}: non-finite activations in units {bad[:10].tolist()} "
                               f"({int(nonfinite.sum())} values); dissection needs finite ones")
    if int(stat.bad_labels):
      raise ValueError(f"segmenter produced {int(stat.bad_labels)} label values outside "
                       f"[0, {stat.pixels.shape[0]})")
    top = topk_stat(shapes.layers[layer][2], config.topk).result(state.tops[layer])
    if config.threshold == "iqr":
      thresholds, scores, iqr = _iqr_result(stat)
      bound = np.zeros(len(thresholds))
    else:
      res = tail.tail_iou(stat, float(config.threshold))
      thresholds, scores, iqr = res.thresholds, res.iou, np.zeros(len(res.thresholds))
      bound = np.max(np.maximum(res.iou_high - res.iou, res.iou - res.iou_low), axis=1)
      bound = np.where(res.resolved, bound, 1.0)
      lo, hi, redo = tail.refine_brackets(stat, res, config.iou_tolerance)
      if redo.any():
        refine[layer] = (lo, hi)
    label = np.argmax(scores, axis=1) if config.threshold != "iqr" else iqr[1]
    iqr_value = iqr if config.threshold != "iqr" else iqr[0]
    units = np.arange(len(thresholds))
    results[layer] = LayerResult(
        layer=layer, shape=shapes.layers[layer], thresholds=np.asarray(thresholds, np.float64),
        iou=scores.astype(np.float32), label=label, best_iou=scores[units, label],
        iou_bound=bound, iqr=np.asarray(iqr_value, np.float64),
        top_values=np.asarray(top.values), top_indices=np.asarray(top.indices))
  return results, refine


def _iqr_result(stat: conditional.ConditionalState):
  """Thresholds `[U]`, exact IoU `[U, K]` at them and (iqr `[U]`, label `[U]`)."""
  chosen = conditional.iqr_thresholds(stat)
  above = np.asarray(stat.above, np.float64)  # [K, U, T]
  units = np.arange(above.shape[1])
  ic = above[:, units, chosen.level_index]  # [K, U]
  active = ic[0]
  concept = np.asarray(stat.pixels, np.float64)[:, None]
  union = active[None] + concept - ic
  scores = np.where(union > 0, ic / np.maximum(union, 1.0), 0.0).T
  scores[:, 0] = 0.0
  return chosen.thresholds, scores, (chosen.iqr, chosen.labels)


class Run(NamedTuple):
  """Everything a driver needs: config, shapes, the step, the activations of a batch
  (`generate(z) -> {layer: acts}`) and the number of concepts. With a `mesh`, `step` takes the
  host batch and a per-device state, and `merge` merges per-device states (else both None)."""

  config: Config
  shapes: Shapes
  step: Callable
  generate: Callable
  num_concepts: int
  mesh: Mesh | None = None
  merge: Callable | None = None


def prepare(gen: Generator, seg: Segmenter, config: Config, mesh: Mesh | None = None) -> Run:
  """Checks the config against the models and builds the jitted functions of a run.

  `mesh`: a 1-D mesh with a `data` axis (`sharding.data_mesh`) to split every batch over, or
  None for one device; `config.batch_size` must then be a multiple of its device count.
  """
  check_config(config, gen)
  shapes = infer_shapes(gen, seg, config)
  num_concepts = len(seg.concepts)
  acts_of = in_chunks(lambda z: gen.apply_fn(gen.params, z, capture=config.layers)[1],
                      config.forward_chunk)
  if mesh is None:
    return Run(config, shapes, step_fn(gen, seg, config, shapes), jax.jit(acts_of), num_concepts)
  sharding.check_batch(config.batch_size, mesh)
  generate = jax.jit(jax.shard_map(acts_of, mesh=mesh, in_specs=P(sharding.DATA),
                                   out_specs=P(sharding.DATA)))
  merge = sharding.merge_fn(merge_states(config, shapes, num_concepts), mesh)
  return Run(config, shapes, sharded_step_fn(gen, seg, config, shapes, mesh), generate,
             num_concepts, mesh, merge)


def merge_states(config: Config, shapes: Shapes, num_concepts: int) -> Callable:
  """`merge(a, b) -> State` of two states tallied on disjoint images (a's brackets kept)."""
  stats = {layer: _stat(config, num_concepts, shapes.layers[layer][2],
                        _placeholder_bracket(config, shapes.layers[layer][2]))
           for layer in config.layers}
  tops = {layer: topk_stat(shapes.layers[layer][2], config.topk) for layer in config.layers}

  def merge(a: State, b: State) -> State:
    return State({k: stats[k].merge(a.stats[k], b.stats[k]) for k in config.layers},
                 {k: tops[k].merge(a.tops[k], b.tops[k]) for k in config.layers},
                 a.images + b.images, a.passes)

  return merge


def sharded_step_fn(gen: Generator, seg: Segmenter, config: Config, shapes: Shapes,
                    mesh: Mesh) -> Callable:
  """`step(state, z, start) -> state` over a mesh: `state` is per-device, `z` a host batch.

  A full batch goes one slice per device. A short last batch is padded to a full one, so the
  models see the same shapes as in every other batch (their numbers cannot depend on it); its
  valid rows are then gathered and re-split, those that do not split evenly being tallied by
  device 0 alone.
  """
  forward = forward_fn(gen, seg, config.layers, config.forward_chunk)
  tally = tally_fn(config, shapes, len(seg.concepts))
  count = mesh.devices.size
  unstack = lambda tree: jax.tree.map(lambda x: x[0], tree)
  stack = lambda tree: jax.tree.map(lambda x: x[None], tree)

  def full(state, z, start):
    index = jax.lax.axis_index(sharding.DATA)
    acts, labels = forward(z)
    return stack(tally(unstack(state), acts, labels, start + index * z.shape[0]))

  def short(state, z, start, rows):
    index = jax.lax.axis_index(sharding.DATA)
    gathered = jax.lax.all_gather(forward(z), sharding.DATA, tiled=True)
    take = lambda tree, begin, size: jax.tree.map(
        lambda x: jax.lax.dynamic_slice_in_dim(x, begin, size), tree)
    state = unstack(state)
    each = rows // count
    if each:
      acts, labels = take(gathered, index * each, each)
      state = tally(state, acts, labels, start + index * each)
    if rows > each * count:
      acts, labels = take(gathered, each * count, rows - each * count)
      kept = tally(state, acts, labels, start + each * count)
      state = jax.tree.map(lambda a, b: jnp.where(index == 0, a, b), kept, state)
    return stack(state)

  data, whole = P(sharding.DATA), P()
  full = jax.jit(jax.shard_map(full, mesh=mesh, in_specs=(data, data, whole), out_specs=data))
  shorts = {}

  def short_fn(rows: int) -> Callable:
    if rows not in shorts:
      body = lambda state, z, start: short(state, z, start, rows)
      shorts[rows] = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(data, data, whole),
                                           out_specs=data))
    return shorts[rows]

  def step(state: State, z: np.ndarray, start) -> State:
    z = np.asarray(z)
    rows = z.shape[0]
    first = sharding.replicate(mesh, np.int32(int(start)))
    if rows == config.batch_size:
      return full(state, sharding.shard_rows(mesh, z), first)
    return short_fn(rows)(state, sharding.shard_rows(mesh, _padded(z, config.batch_size)), first)

  return step


def _padded(z: np.ndarray, size: int) -> np.ndarray:
  """A short batch padded with zero rows to `size`: one compiled shape for every batch."""
  padded = np.zeros((size, *z.shape[1:]), z.dtype)
  padded[:z.shape[0]] = z
  return padded


def _device_acts(run: Run, z: np.ndarray) -> dict[str, jax.Array]:
  """Device activations of a warmup batch (on a mesh: padded to the batch size, sharded; the
  padding's activations follow the batch's rows)."""
  if run.mesh is None:
    return run.generate(jnp.asarray(z))
  return run.generate(sharding.shard_rows(run.mesh, _padded(z, run.config.batch_size)))


def _warmup_acts(run: Run, z: np.ndarray) -> dict[str, np.ndarray]:
  """Host activations of a warmup batch (gathered from every device and process)."""
  acts = _device_acts(run, z)
  if run.mesh is None:
    return jax.device_get(acts)
  return {layer: sharding.gather_rows(a)[:z.shape[0]] for layer, a in acts.items()}


def place_state(run: Run, state: State) -> State:
  """A (merged, host) state laid out for `run.step`: per device on a mesh, as is without one.

  Device 0 holds `state`; the others hold empty tallies on exactly its brackets (copied, not
  recomputed, so every device bins alike).
  """
  if run.mesh is None:
    return state
  host = jax.tree.map(np.asarray, state)
  empty = template_state(run)
  stats = {layer: empty.stats[layer]._replace(**{
      f: getattr(host.stats[layer], f) for f in _BRACKET_FIELDS
      if f in host.stats[layer]._fields}) for layer in run.config.layers}
  empty = empty._replace(stats=stats, passes=host.passes)
  return sharding.per_device(run.mesh, host, jax.tree.map(np.asarray, empty))


_BRACKET_FIELDS = ("lo", "width", "edges")  # configuration, not counts, of the stats' states


def gather_state(run: Run, state: State) -> State:
  """The merged state of all devices and processes, on the host (as is without a mesh)."""
  if run.mesh is None:
    return state
  return sharding.first_local(run.merge(state))


def start(run: Run) -> State:
  """Predicts every unit's bracket from the first `warmup` images; returns the empty state.

  The warmup runs the generator only; its images are tallied again by the pass itself, which
  costs warmup / n of a generator pass and keeps one compiled step for every batch.
  """
  config = run.config
  warm = min(config.n, config.warmup)
  zs = z_batches(warm, config.seed, config.batch_size, config.zdim)
  if _warmup_on_device(config):
    brackets = device_warmup_brackets(run, (z for _, z in zs))
  else:
    brackets = warmup_brackets(config, run.shapes, [_warmup_acts(run, z) for _, z in zs])
  return place_state(run, init_state(config, run.shapes, run.num_concepts, brackets))


def _warmup_on_device(config: Config) -> bool:
  check_choice("warmup_on", config.warmup_on, ("auto", "host", "device"))
  if config.threshold == "iqr":
    return False
  return config.warmup_on == "device" or (config.warmup_on == "auto"
                                          and jax.default_backend() != "cpu")


def device_warmup_brackets(run: Run, zs) -> dict[str, Any]:
  """`warmup_brackets` (quantile mode) with the order statistics found on the devices.

  Each batch's upsampled activations are folded into a running `[U, 3qN]` top-k per unit that
  never leaves the devices until the end (on a mesh it is replicated), instead of copying every
  upsampled value to the host: 100 images of an 8x8x512 layer at 128x128 are 3.4 GB.
  """
  config, shapes = run.config, run.shapes
  zs = [np.asarray(z, np.float32) for z in zs]
  q = float(config.threshold)
  total = sum(len(z) for z in zs) * shapes.seg_size[0] * shapes.seg_size[1]
  keep = _tail_ranks(total, q)[1]
  replicated = None if run.mesh is None else NamedSharding(run.mesh, P())
  place = jnp.asarray if run.mesh is None else functools.partial(sharding.replicate, run.mesh)
  kept = {layer: place(np.full((shapes.layers[layer][2], keep), -np.inf, np.float32))
          for layer in config.layers}
  bad = {layer: place(np.zeros(shapes.layers[layer][2], np.int32)) for layer in config.layers}
  for z in zs:
    acts = _device_acts(run, z)
    fold = _fold_largest(shapes.seg_size, len(z), replicated)
    for layer in config.layers:
      kept[layer], bad[layer] = fold(kept[layer], bad[layer], acts[layer])
  brackets = {}
  for layer in config.layers:
    nonfinite = _local_copy(bad[layer])
    if nonfinite.any():
      units = np.nonzero(nonfinite)[0]
      raise FloatingPointError(f"{layer}: non-finite activations in units {units[:10].tolist()}; "
                               "dissection needs finite ones")
    brackets[layer] = _bracket_of_largest(_local_copy(kept[layer]), total, q)
  return brackets


def _local_copy(x: jax.Array) -> np.ndarray:
  """A replicated (or single-device) array's value on this process."""
  return np.asarray(x.addressable_data(0))


@functools.lru_cache(maxsize=64)
def _fold_largest(seg_size: tuple[int, int], rows: int, replicated) -> Callable:
  """Jitted `(kept, bad, acts) -> (kept, bad)`: each unit's largest upsampled values so far (the
  first `rows` images of `acts`) and its count of non-finite ones (which never enter `kept`)."""

  def fold(kept, bad, acts):
    units = acts.shape[-1]
    values = upsample(acts[:rows].astype(jnp.float32), seg_size).reshape(-1, units).T
    finite = jnp.isfinite(values)
    values = jnp.where(finite, values, -jnp.inf)
    kept = jax.lax.top_k(jnp.concatenate([kept, values], axis=1), kept.shape[1])[0]
    return kept, bad + jnp.sum(~finite, axis=1, dtype=jnp.int32)

  if replicated is None:
    return jax.jit(fold, donate_argnums=(0, 1))
  return jax.jit(fold, out_shardings=(replicated, replicated), donate_argnums=(0, 1))


def images_tallied(state: State) -> int:
  """Images of the current pass tallied so far (summed over devices for a per-device state)."""
  return int(np.sum(sharding.gather_rows(state.images)))


def passes_done(state: State) -> int:
  """Passes finished before the current one (of a merged or a per-device state)."""
  return int(np.max(sharding.gather_rows(state.passes)))


def remaining(run: Run, state: State):
  """Yields `(start, z)` for the batches of the current pass not yet tallied."""
  done = images_tallied(state)
  yield from z_batches(run.config.n, run.config.seed, run.config.batch_size, run.config.zdim,
                       start=done)


def finish(run: Run, state: State) -> tuple[dict[str, LayerResult] | None, State | None]:
  """Results when every unit is within tolerance (or passes ran out), else the next pass's state."""
  state = gather_state(run, state)
  results, refine = layer_results(run.config, run.shapes, state)
  passes = int(state.passes) + 1
  if not refine or passes >= run.config.max_passes:
    return results, None
  brackets = brackets_of(state, run.config)
  brackets.update(refine)
  fresh = init_state(run.config, run.shapes, run.num_concepts, brackets, passes)
  return None, place_state(run, fresh)


def dissect(gen: Generator, seg: Segmenter, config: Config,
            on_batch: Callable[[State], None] | None = None,
            state: State | None = None, mesh: Mesh | None = None) -> dict[str, LayerResult]:
  """Dissects `config.layers` of `gen` with `seg` over the first `config.n` latents.

  `on_batch(state)` is called after every batch (progress, checkpoints; with a mesh the state is
  per device: `gather_state` merges it); `state` resumes a run (a merged state); `mesh` splits
  batches over devices (see `prepare`).
  """
  run = prepare(gen, seg, config, mesh)
  state = start(run) if state is None else place_state(run, state)
  while True:
    for first, z in remaining(run, state):
      if mesh is None:
        z = jnp.asarray(z)
      state = run.step(state, z, jnp.int32(first))
      if on_batch is not None:
        on_batch(state)
    results, state = finish(run, state)
    if results is not None:
      return results


def template_state(run: Run) -> State:
  """A state with the shapes and dtypes of this run's states (to load a checkpoint into)."""
  dummy = {layer: _placeholder_bracket(run.config, units)
           for layer, (_, _, units) in run.shapes.layers.items()}
  return init_state(run.config, run.shapes, run.num_concepts, dummy)


def state_to_tree(state: State) -> dict:
  """Plain nested dicts of arrays (what checkpoints store)."""
  return {"stats": {k: dict(v._asdict()) for k, v in state.stats.items()},
          "tops": {k: dict(v._asdict()) for k, v in state.tops.items()},
          "images": state.images, "passes": state.passes}


def state_from_tree(tree: dict, like: State) -> State:
  """Inverse of `state_to_tree`, with the NamedTuple types of `like`."""
  stats = {k: type(like.stats[k])(**v) for k, v in tree["stats"].items()}
  tops = {k: type(like.tops[k])(**v) for k, v in tree["tops"].items()}
  return State(stats, tops, jnp.asarray(tree["images"]), jnp.asarray(tree["passes"]))
