"""One-pass dissection of several layers: thresholds, IoU, labels and top images per unit.

The original runs the generator and segmenter two or three times over the sample: once for the
quantiles that set each unit's threshold, again to count IoU at that threshold (and a third time
for IQR thresholds). Here the first `warmup` images predict, for each unit, where its threshold
will fall (`jaxdissect.warmup`); then a single pass tallies what the threshold rule needs
(`jaxdissect.thresholds`), from which thresholds and every IoU are read off at the end with hard
error bounds. Units whose bound is wider than `iou_tolerance` (an unlucky warmup) get a narrower
bracket and another pass; usually none do.

The state is a pytree of fixed-size integer tallies, so it checkpoints, resumes and merges, and
memory does not grow with n. Every run is on a device mesh (one device is a 1-device mesh):
the state is per device while tallying and merged by `gather_state` (see `jaxdissect.steps`).
The building blocks are `prepare`, `start`, `Run.step`, `finish`; the one loop over them,
with checkpoints, resume, progress and the output files, is `jaxdissect.driver`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxdissect import fit, sharding, stages, steps, warmup
from jaxdissect.errors import check_choice
from jaxdissect.latents import Latents, pad_rows, seeded
from jaxdissect.model import Generator, Segmenter
from jaxdissect.stats.topk import topk as topk_stat
from jaxdissect.stats import levels
from jaxdissect.thresholds import CountAt, ThresholdRule, rule_for

# `Config.forward_chunk` value asking `prepare` to choose the chunk that fits the device.
AUTO_CHUNK = -1


class Config(NamedTuple):
  """What to dissect and how. `threshold` is q (a unit is on in its top q) or "iqr".

  `latents`: where the images' latents come from (`jaxdissect.latents`); None is the seeded
  sample `seed`. `forward_chunk`: images per generator and segmenter call (0: a device's whole
  share of a batch; -1, `AUTO_CHUNK`, the default: the largest divisor of that share whose step
  fits the device's memory by XLA's analysis, see `jaxdissect.fit`; on devices without a memory
  limit, as CPUs, whose forward plans at most `fit.HOST_CALL_BYTES`); convolutions may round
  differently for different batch shapes (XLA's CPU ones do), so runs on different device counts
  are bit-identical when it divides every device's share. `memory_budget`: bytes per device the
  automatic chunk must fit (None: a share of the device's limit, `fit.SAFETY`); only with
  `forward_chunk=-1`. `warmup_on`: where the warmup ranks activations, "host", "device" or
  "auto" (see `jaxdissect.warmup`); the brackets are the same.

  Definitions (the PNAS ones by default; `compat` presets set the original GAN Dissection's):
  `quantile_of`, "upsampled" or "raw": whose quantile a numeric threshold is (the activations
  upsampled to the labels, or the raw featuremap; "on" is always judged upsampled); `iou`,
  "plain" or "category" (the original's denominator: a unit's on-pixels only in images where the
  label's category occurs); `threshold_latents` / `threshold_n`: another sample to choose the
  thresholds on (None: the dissected one); `given_thresholds`: `{layer: [U] levels}` to count at
  exactly. Any but the defaults runs a threshold stage, then one exact counting pass
  (`jaxdissect.stages`).
  """

  layers: tuple[str, ...]
  n: int
  batch_size: int = 100
  seed: int = 1
  threshold: float | str = 0.01
  topk: int = 10
  num_bins: int = 2048
  warmup: int = 100
  iou_tolerance: float = 1e-3
  max_passes: int = 3
  tally_chunk: int = 10
  forward_chunk: int = AUTO_CHUNK
  warmup_on: str = "auto"
  latents: Latents | None = None
  memory_budget: int | None = None
  quantile_of: str = "upsampled"
  iou: str = "plain"
  threshold_latents: Latents | None = None
  threshold_n: int | None = None
  given_thresholds: Mapping[str, Any] | None = None

  @property
  def source(self) -> Latents:
    """The latents the run's images come from."""
    return seeded(self.seed) if self.latents is None else self.latents

  @property
  def threshold_source(self) -> Latents:
    """The latents the thresholds are chosen on."""
    return self.source if self.threshold_latents is None else self.threshold_latents

  @property
  def staged(self) -> bool:
    """Whether the definitions need a threshold stage before an exact counting pass."""
    return (self.quantile_of != "upsampled" or self.iou != "plain"
            or self.threshold_latents is not None or self.given_thresholds is not None)

  def definitions(self) -> dict[str, Any]:
    """What `dissect.json` records of the definitions in use."""
    if self.given_thresholds is not None:
      chosen = "given"
    else:
      chosen = ("iqr" if self.threshold == "iqr" else
                f"top {self.threshold:g} of the {self.quantile_of} activations")
    return {"thresholds": chosen, "quantile_of": self.quantile_of, "iou": self.iou,
            "threshold_latents": (None if self.threshold_latents is None
                                  else self.threshold_latents.record()),
            "threshold_n": (None if self.given_thresholds is not None
                            else self.threshold_n or self.n),
            "staged": self.staged}

  @property
  def rule(self) -> ThresholdRule:
    """The threshold rule the settings name (`jaxdissect.thresholds`)."""
    return rule_for(self.threshold, num_bins=self.num_bins, tolerance=self.iou_tolerance,
                    seed=self.seed)


class Shapes(NamedTuple):
  """Static shapes of a run: featuremap `[H, W, C]` per layer, label size and label depth."""

  layers: dict[str, tuple[int, int, int]]
  seg_size: tuple[int, int]
  label_depth: int
  image: tuple[int, int, int]


class State(NamedTuple):
  """Running state of a pass: per-layer tallies plus progress counters (all arrays).

  `stats[layer]` is the threshold rule's tally; `tops[layer]` the per-unit top-k of per-image
  maxima; `images` how many images of this pass are tallied; `passes` how many passes were
  finished before this one.
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
  config.rule  # pylint: disable=pointless-statement  (raises for a bad threshold)
  check_choice("warmup_on", config.warmup_on, ("auto", "host", "device"))
  check_choice("quantile_of", config.quantile_of, stages.QUANTILE_OF)
  check_choice("iou", config.iou, stages.IOU_DENOMINATORS)
  if config.threshold_n is not None and config.threshold_n < 1:
    raise ValueError(f"threshold_n is {config.threshold_n}, expected an integer >= 1")
  for name, value, least in (("n", config.n, 1), ("batch_size", config.batch_size, 1),
                             ("topk", config.topk, 1), ("num_bins", config.num_bins, 1),
                             ("warmup", config.warmup, 1), ("max_passes", config.max_passes, 1),
                             ("tally_chunk", config.tally_chunk, 1),
                             ("forward_chunk", config.forward_chunk, AUTO_CHUNK)):
    if value < least:
      raise ValueError(f"{name} is {value}, expected an integer >= {least}")
  if config.memory_budget is not None:
    if config.forward_chunk != AUTO_CHUNK:
      raise ValueError(f"memory_budget is {config.memory_budget} but forward_chunk is "
                       f"{config.forward_chunk}; the budget only applies to forward_chunk="
                       f"{AUTO_CHUNK} (automatic)")
    if config.memory_budget < 1:
      raise ValueError(f"memory_budget is {config.memory_budget}, expected a positive number "
                       "of bytes")
  config.source.check(config.n, gen.latent_shape)
  if config.staged and config.given_thresholds is None:
    config.threshold_source.check(config.threshold_n or config.n, gen.latent_shape)


def infer_shapes(gen: Generator, seg: Segmenter, config: Config) -> Shapes:
  """Shapes of the run from an abstract evaluation; raises ValueError when the models disagree."""
  z = jax.ShapeDtypeStruct((1, *gen.latent_shape), jnp.float32)
  try:
    image, acts = jax.eval_shape(lambda z: gen.apply_fn(gen.params, z, capture=config.layers), z)
  except Exception as e:  # a wrong latent shape surfaces as a shape error inside the model
    raise ValueError(f"generator does not accept latents of shape {[1, *gen.latent_shape]}: "
                     f"{e}") from e
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


class Run(NamedTuple):
  """Everything a driver needs: config, shapes, the threshold rule, the latents' shape, the
  jitted step (`step(state, z, start)`, per-device state, donated; host batch), the activations of a
  padded batch (`generate(z) -> {layer: acts}`), the mesh and the merge of per-device states.

  `forward_chunk` is the images per model call in use (the config's, or the one chosen for
  `forward_chunk=-1`; 0: a device's whole share); `fitted` how it was chosen (`fit.Fit`), or None
  when it was not."""

  config: Config
  shapes: Shapes
  rule: ThresholdRule
  latent_shape: tuple[int, ...]
  step: Callable
  generate: Callable
  num_concepts: int
  mesh: Mesh
  merge: Callable
  forward_chunk: int = 0
  fitted: fit.Fit | None = None
  stage: Callable | None = None


def rule_of(config: Config, concepts) -> ThresholdRule:
  """The rule of a run: the config's fused one, or exact counts after a threshold stage."""
  if not config.staged:
    return config.rule
  return CountAt(config.iou, levels.categories_of(concepts)[1])


def prepare(gen: Generator, seg: Segmenter, config: Config, mesh: Mesh | None = None,
            rule: ThresholdRule | None = None) -> Run:
  """Checks the config against the models and builds the jitted functions of a run.

  `mesh`: a 1-D mesh with a `data` axis (`sharding.data_mesh`) to split every batch over (None:
  one device); `config.batch_size` must be a multiple of its device count. `rule`: instead of
  the config's (a threshold stage runs its own).
  """
  check_config(config, gen)
  shapes = infer_shapes(gen, seg, config)
  if config.given_thresholds is not None:
    for layer, (_, _, units) in shapes.layers.items():
      stages.given_levels(config.given_thresholds, layer, units)
  mesh = sharding.data_mesh(1) if mesh is None else mesh
  sharding.check_batch(config.batch_size, mesh)
  rule = rule_of(config, seg.concepts) if rule is None else rule
  num_concepts = len(seg.concepts)
  units = {layer: s[2] for layer, s in shapes.layers.items()}
  merge = sharding.merge_fn(steps.merge_fn(rule, units, num_concepts, config.topk), mesh)
  tally = steps.tally_fn(rule, units, shapes.seg_size, num_concepts, config.topk,
                         config.tally_chunk)
  run = Run(config, shapes, rule, tuple(gen.latent_shape), None, None, num_concepts, mesh, merge,
            config.forward_chunk)
  if config.forward_chunk == AUTO_CHUNK:
    run = _fit_chunk(run, gen, seg, tally)
  acts_of = steps.in_chunks(lambda z: gen.apply_fn(gen.params, z, capture=config.layers)[1],
                            run.forward_chunk)
  generate = jax.jit(jax.shard_map(acts_of, mesh=mesh, in_specs=P(sharding.DATA),
                                   out_specs=P(sharding.DATA)))
  forward = steps.forward_fn(gen, seg, config.layers, run.forward_chunk)
  step = steps.sharded_step_fn(forward, tally, config.batch_size, mesh)
  stage = (lambda run: stages.brackets(gen, seg, run)) if isinstance(rule, CountAt) else None
  return run._replace(step=step, generate=generate, stage=stage)


def _fit_chunk(run: Run, gen: Generator, seg: Segmenter, tally: Callable) -> Run:
  """`run` with the largest forward chunk whose per-device step (generate, segment and tally a
  device's share into its donated state) fits the memory budget; 0 when there is no budget."""
  config, mesh = run.config, run.mesh
  budget = config.memory_budget
  if budget is None:
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    budget = fit.device_budget(local)
  share = config.batch_size // mesh.devices.size
  if budget is None:
    return run._replace(forward_chunk=_host_chunk(gen, seg, config.layers, run.latent_shape,
                                                  share))
  state = jax.eval_shape(lambda: template_state(run))
  z = jax.ShapeDtypeStruct((share, *run.latent_shape), jnp.float32)

  def body_for(chunk: int) -> Callable:
    forward = steps.forward_fn(gen, seg, config.layers, chunk)
    return lambda state, z: tally(state, *forward(z), jnp.int32(0))

  try:
    fitted = fit.largest_chunk(body_for, (state, z), fit.divisors(share), budget,
                               donate_argnums=(0,))
  except ValueError as e:
    raise ValueError(f"forward_chunk=-1: {e}. Besides the models, a step holds the tallies "
                     f"and tally_chunk={config.tally_chunk} images' upsampled maps") from e
  return run._replace(forward_chunk=fitted.chunk, fitted=fitted)


def _host_chunk(gen: Generator, seg: Segmenter, layers: tuple[str, ...],
                latent_shape: tuple[int, ...], share: int) -> int:
  """`fit.host_chunk` of the forward (generator and segmenter)."""
  one = jax.ShapeDtypeStruct((1, *latent_shape), jnp.float32)
  return fit.host_chunk(steps.forward_fn(gen, seg, layers), one, share)


def init_state(run: Run, brackets: dict[str, Any], passes: int = 0) -> State:
  """A fresh (host) state for a pass with the given per-layer brackets."""
  stats = {layer: run.rule.stat(run.num_concepts, s[2], brackets.get(layer)).init()
           for layer, s in run.shapes.layers.items()}
  tops = {layer: topk_stat(s[2], run.config.topk).init()
          for layer, s in run.shapes.layers.items()}
  return State(stats, tops, jnp.zeros((), jnp.int32), jnp.asarray(passes, jnp.int32))


def template_state(run: Run) -> State:
  """A state with the shapes and dtypes of this run's states (to load a checkpoint into)."""
  return init_state(run, {})


def brackets_of(run: Run, state: State) -> dict[str, Any]:
  """The brackets a (merged) state was built on."""
  return {layer: run.rule.bracket_of(s) for layer, s in state.stats.items()}


def place_state(run: Run, state: State) -> State:
  """A merged host state laid out per device for `run.step`: device 0 holds `state`, the others
  empty tallies on exactly its brackets (copied, not recomputed, so every device bins alike)."""
  host = jax.tree.map(np.asarray, state)
  empty = template_state(run)
  fields = run.rule.bracket_fields
  stats = {layer: empty.stats[layer]._replace(**{f: getattr(host.stats[layer], f)
                                                 for f in fields})
           for layer in run.config.layers}
  empty = empty._replace(stats=stats, passes=host.passes)
  return sharding.per_device(run.mesh, host, jax.tree.map(np.asarray, empty))


def gather_state(run: Run, state: State) -> State:
  """The merged state of all devices and processes, on the host."""
  return sharding.first_local(run.merge(state))


def _acts_of(run: Run, z: np.ndarray) -> dict[str, jax.Array]:
  """Device activations of a (padded, sharded) batch of latents."""
  return run.generate(sharding.shard_rows(run.mesh, pad_rows(z, run.config.batch_size)))


# Host bytes the warmup may keep of its images' activations and labels to tally them after
# the brackets are known (instead of generating them again in the pass).
KEEP_WARMUP_BYTES = 256 << 20


def start(run: Run) -> State:
  """Predicts every unit's bracket from the first `warmup` images; returns the state to go on
  from.

  When their activations and labels take at most `KEEP_WARMUP_BYTES`, the warmup runs the
  generator and segmenter once on its images, keeps the outputs and tallies them as soon as the
  brackets are known (the returned state has them counted, and the pass goes on after them);
  else it runs the generator alone, and the pass tallies its images again from the start.
  """
  config, shapes = run.config, run.shapes
  if run.stage is not None:  # levels fixed by a threshold stage: nothing to warm up
    return place_state(run, init_state(run, run.stage(run)))
  batches = list(config.source.batches(min(config.n, config.warmup), config.batch_size,
                                       run.latent_shape))
  rows = sum(len(z) for _, z in batches)
  keep = _output_bytes(shapes, config.batch_size) * len(batches) <= KEEP_WARMUP_BYTES
  outs = [run.step.forward(z) if keep else None for _, z in batches]
  acts = (out[0] if keep else _acts_of(run, z) for out, (_, z) in zip(outs, batches))
  if warmup.on_device(run.rule, config.warmup_on):
    brackets = warmup.device_brackets(run.rule, shapes.layers, shapes.seg_size, run.mesh,
                                      ((len(z), a) for a, (_, z) in zip(acts, batches)))
  else:
    brackets = warmup.host_brackets(run.rule, shapes.layers, shapes.seg_size,
                                    (warmup.gathered(a, len(z)) for a, (_, z) in
                                     zip(acts, batches)), rows=rows)
  state = place_state(run, init_state(run, brackets))
  if keep:
    for out, (first, z) in zip(outs, batches):
      state = run.step.tally(state, out, first, len(z))
  return state


def _output_bytes(shapes: Shapes, batch: int) -> int:
  """Bytes of one batch's activations (float32) and labels (int32)."""
  per_image = sum(h * w * c for h, w, c in shapes.layers.values())
  per_image += shapes.seg_size[0] * shapes.seg_size[1] * shapes.label_depth
  return 4 * batch * per_image


def images_tallied(state: State) -> int:
  """Images of the current pass tallied so far (summed over devices for a per-device state)."""
  return int(np.sum(sharding.gather_rows(state.images)))


def passes_done(state: State) -> int:
  """Passes finished before the current one (of a merged or a per-device state)."""
  return int(np.max(sharding.gather_rows(state.passes)))


def remaining(run: Run, state: State) -> Iterator[tuple[int, np.ndarray]]:
  """Yields `(start, z)` for the batches of the current pass not yet tallied."""
  config = run.config
  yield from config.source.batches(config.n, config.batch_size, run.latent_shape,
                                   start=images_tallied(state))


def layer_results(run: Run, state: State) -> tuple[dict[str, LayerResult], dict[str, Any]]:
  """Results per layer of a merged state, and refined brackets for layers needing a pass."""
  results, refine = {}, {}
  for layer, shape in run.shapes.layers.items():
    stat = state.stats[layer]
    nonfinite = np.asarray(stat.nonfinite)
    if nonfinite.any():
      bad = np.nonzero(nonfinite)[0]
      raise FloatingPointError(f"{layer}: non-finite activations in units {bad[:10].tolist()} "
                               f"({int(nonfinite.sum())} values); dissection needs finite ones")
    if int(stat.bad_labels):
      raise ValueError(f"segmenter produced {int(stat.bad_labels)} label values outside "
                       f"[0, {stat.pixels.shape[0]})")
    top = topk_stat(shape[2], run.config.topk).result(state.tops[layer])
    out = run.rule.outcome(stat)
    if out.refine is not None:
      refine[layer] = out.refine
    units = np.arange(len(out.thresholds))
    results[layer] = LayerResult(
        layer=layer, shape=shape, thresholds=np.asarray(out.thresholds, np.float64),
        iou=np.asarray(out.iou, np.float32), label=out.label, best_iou=out.iou[units, out.label],
        iou_bound=out.iou_bound, iqr=np.asarray(out.iqr, np.float64),
        top_values=np.asarray(top.values), top_indices=np.asarray(top.indices))
  return results, refine


def finish(run: Run, state: State) -> tuple[dict[str, LayerResult] | None, State | None]:
  """Results when every unit is within tolerance (or passes ran out), else the next pass's state."""
  state = gather_state(run, state)
  results, refine = layer_results(run, state)
  passes = int(state.passes) + 1
  if not refine or passes >= run.config.max_passes:
    return results, None
  brackets = brackets_of(run, state)
  brackets.update(refine)
  return None, place_state(run, init_state(run, brackets, passes))


def dissect(gen: Generator, seg: Segmenter, config: Config,
            mesh: Mesh | None = None) -> dict[str, LayerResult]:
  """Dissects `config.layers` of `gen` with `seg` over the first `config.n` latents, in memory
  (`jaxdissect.driver.run` without checkpoints; `mesh` splits batches over devices)."""
  from jaxdissect import driver  # pylint: disable=g-import-not-at-top (driver builds on this)
  return driver.run(gen, seg, config, mesh=mesh)


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
