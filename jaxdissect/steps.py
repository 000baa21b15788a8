"""The jitted per-batch work of a dissection: generate, segment and tally, on a device mesh.

Every run, one device or many, goes through the same step: each device of the mesh's `data` axis
generates, segments and tallies its own slice of a batch into its own copy of the state (leaves
stacked `[devices, ...]`), and copies merge with collectives only when results or a checkpoint
need them. Counts are integers and top-k ranks by (value, global index), so the results equal a
single device's exactly, given models that compute each image alike in calls of any size (else
see `Config.forward_chunk`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdissect import sharding
from jaxdissect.model import Generator, Segmenter
from jaxdissect.stats import upsampled_kernels
from jaxdissect.stats.topk import topk as topk_stat
from jaxdissect.upsample import upsample
from jaxdissect.latents import pad_rows


def in_chunks(fn: Callable, chunk: int) -> Callable:
  """`fn` over a batch, applied `gcd(B, chunk)` rows at a time (as is when chunk is 0), so the
  numbers of an image do not depend on how many images share its call."""
  if not chunk:
    return fn

  def chunked(z):
    size = math.gcd(z.shape[0], chunk)
    if size == z.shape[0]:
      return fn(z)
    out = jax.lax.map(fn, z.reshape(z.shape[0] // size, size, *z.shape[1:]))
    return jax.tree.map(lambda x: x.reshape(z.shape[0], *x.shape[2:]), out)

  return chunked


def forward_fn(gen: Generator, seg: Segmenter, layers: Sequence[str], chunk: int = 0) -> Callable:
  """`f(z) -> (acts {layer: [B, h, w, C]}, labels [B, H, W, D])`, not jitted."""
  layers = tuple(layers)

  def forward(z):
    image, acts = gen.apply_fn(gen.params, z, capture=layers)
    return acts, seg.label_fn(seg.params, image)

  return in_chunks(forward, chunk)


def tally_fn(rule: Any, units: Mapping[str, int], seg_size: tuple[int, int], num_concepts: int,
             topk: int, tally_chunk: int, chunk_bytes: int = 32 << 20) -> Callable:
  """`tally(state, acts, labels, start) -> state`: adds one batch (pure, to be jitted).

  Each layer's per-pixel work runs over chunks of at most `tally_chunk` images in a
  `lax.scan`, fewer when a chunk's upsampled maps would pass `chunk_bytes` (a 128x128 map of
  512 units is 32 MiB per image), so they stay in cache instead of streaming a whole batch
  through memory (1.6x faster on CPU for the scene GAN's 8x8x128 layer at 64x64).
  """
  updates = {layer: rule.update(num_concepts, u) for layer, u in units.items()}
  tops = {layer: topk_stat(u, topk) for layer, u in units.items()}
  per_image = {layer: u * seg_size[0] * seg_size[1] * 4 for layer, u in units.items()}

  def tally_layer(stat, layer, acts, labels):
    batch = labels.shape[0]
    if jax.default_backend() == "cpu" and upsampled_kernels.fuses(acts.shape, seg_size):
      size = batch  # the counting loops read the raw map: no upsampled chunk to keep in cache
    else:
      size = math.gcd(batch, max(1, min(tally_chunk, chunk_bytes // per_image[layer])))
    split = lambda x: x.reshape(batch // size, size, *x.shape[1:])

    def chunk_of(stat, chunk):
      a, lab = chunk
      a = a.astype(jnp.float32)
      return updates[layer](stat, upsample(a, seg_size), lab, a), None

    return jax.lax.scan(chunk_of, stat, (split(acts), split(labels)))[0]

  def tally(state, acts: dict[str, jax.Array], labels: jax.Array, start):
    batch = labels.shape[0]
    stats = {layer: tally_layer(state.stats[layer], layer, acts[layer], labels)
             for layer in units}
    index = start + jnp.arange(batch, dtype=jnp.int32)
    new_tops = {layer: tops[layer].update(state.tops[layer],
                                          jnp.max(acts[layer].astype(jnp.float32), axis=(1, 2)),
                                          index) for layer in units}
    return state._replace(stats=stats, tops=new_tops, images=state.images + batch)

  return tally


def merge_fn(rule: Any, units: Mapping[str, int], num_concepts: int, topk: int) -> Callable:
  """`merge(a, b) -> state` of two states tallied on disjoint images (a's brackets kept)."""
  stats = {layer: rule.stat(num_concepts, u) for layer, u in units.items()}
  tops = {layer: topk_stat(u, topk) for layer, u in units.items()}

  def merge(a, b):
    return a._replace(stats={k: stats[k].merge(a.stats[k], b.stats[k]) for k in units},
                      tops={k: tops[k].merge(a.tops[k], b.tops[k]) for k in units},
                      images=a.images + b.images)

  return merge


def sharded_step_fn(forward: Callable, tally: Callable, batch_size: int, mesh: Mesh) -> Callable:
  """`step(state, z, start) -> state` over a mesh: `state` is per-device (and donated: use only
the returned one), `z` a host batch.

  A full batch goes one slice per device. A short last batch is padded to a full one, so the
  models see the same shapes as in every other batch (their numbers cannot depend on it); its
  valid rows are then gathered and re-split, those that do not split evenly being tallied by
  device 0 alone. `step.forward(z)` runs the models alone (device arrays, laid out as the step
  lays them out) and `step.tally(state, out, start, rows)` tallies such an output later: the
  warmup keeps its images' outputs instead of generating them twice.
  """
  count = mesh.devices.size
  unstack = lambda tree: jax.tree.map(lambda x: x[0], tree)
  stack = lambda tree: jax.tree.map(lambda x: x[None], tree)

  def full(state, out, start):
    index = jax.lax.axis_index(sharding.DATA)
    acts, labels = out
    return stack(tally(unstack(state), acts, labels, start + index * labels.shape[0]))

  def short(state, out, start, rows):
    index = jax.lax.axis_index(sharding.DATA)
    gathered = jax.lax.all_gather(out, sharding.DATA, tiled=True)
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
  compiled, tallies = {}, {}

  def body_for(rows: int) -> Callable:
    return full if rows == batch_size else lambda s, out, start: short(s, out, start, rows)

  def jitted(body: Callable) -> Callable:
    # Explicit out_shardings: on a 1-device mesh XLA would otherwise hand back P() states,
    # a second cache entry for what is the same layout. The state is donated: its buffers
    # become the next state's (a caller keeps only the returned state).
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(data, data, whole), out_specs=data),
                   out_shardings=NamedSharding(mesh, data), donate_argnums=0)

  def step_for(rows: int) -> Callable:
    if rows not in compiled:
      body = body_for(rows)
      compiled[rows] = jitted(lambda s, z, start: body(s, forward(z), start))
    return compiled[rows]

  models = jax.jit(jax.shard_map(forward, mesh=mesh, in_specs=data, out_specs=data))

  def step(state, z, start):
    z = np.asarray(z)
    rows = z.shape[0]
    first = sharding.replicate(mesh, np.int32(int(start)))
    return step_for(rows)(state, sharding.shard_rows(mesh, pad_rows(z, batch_size)), first)

  def run_models(z):
    """`(acts, labels)` of a host batch (padded to a full one), as the step computes them."""
    return models(sharding.shard_rows(mesh, pad_rows(np.asarray(z), batch_size)))

  def tally_output(state, out, start, rows: int):
    """`step` for a batch whose models already ran (`out = step.forward(z)`, `rows` real)."""
    if rows not in tallies:
      tallies[rows] = jitted(body_for(rows))
    return tallies[rows](state, out, sharding.replicate(mesh, np.int32(int(start))))

  def cache_size() -> int:
    """Compiled executables so far (tests check that every full batch reuses one)."""
    return sum(fn._cache_size() for fn in compiled.values())  # pylint: disable=protected-access

  step.cache_size = cache_size
  step.forward = run_models
  step.tally = tally_output
  return step
