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
             topk: int, tally_chunk: int) -> Callable:
  """`tally(state, acts, labels, start) -> state`: adds one batch (pure, to be jitted).

  The per-pixel work runs over chunks of `tally_chunk` images in a `lax.scan`, so the upsampled
  maps of a chunk stay in cache instead of streaming a whole batch through memory (1.6x faster
  on CPU for the scene GAN's 8x8x128 layer at 64x64).
  """
  updates = {layer: rule.update(num_concepts, u) for layer, u in units.items()}
  tops = {layer: topk_stat(u, topk) for layer, u in units.items()}

  def tally_chunk_of(stats, chunk):
    acts, labels = chunk
    out = {}
    for layer, update in updates.items():
      a = acts[layer].astype(jnp.float32)
      out[layer] = update(stats[layer], upsample(a, seg_size), labels, a)
    return out, None

  def tally(state, acts: dict[str, jax.Array], labels: jax.Array, start):
    batch = labels.shape[0]
    size = math.gcd(batch, tally_chunk)
    split = lambda x: x.reshape(batch // size, size, *x.shape[1:])
    chunks = ({layer: split(acts[layer]) for layer in units}, split(labels))
    stats, _ = jax.lax.scan(tally_chunk_of, state.stats, chunks)
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
  device 0 alone.
  """
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
  compiled = {}

  def step_for(rows: int) -> Callable:
    if rows not in compiled:
      body = full if rows == batch_size else lambda s, z, start: short(s, z, start, rows)
      # Explicit out_shardings: on a 1-device mesh XLA would otherwise hand back P() states,
      # a second cache entry for what is the same layout. The state is donated: its buffers
      # become the next state's (a caller keeps only the returned state).
      compiled[rows] = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(data, data, whole),
                                             out_specs=data),
                               out_shardings=NamedSharding(mesh, data), donate_argnums=0)
    return compiled[rows]

  def step(state, z, start):
    z = np.asarray(z)
    rows = z.shape[0]
    first = sharding.replicate(mesh, np.int32(int(start)))
    return step_for(rows)(state, sharding.shard_rows(mesh, pad_rows(z, batch_size)), first)

  def cache_size() -> int:
    """Compiled executables so far (tests check that every full batch reuses one)."""
    return sum(fn._cache_size() for fn in compiled.values())  # pylint: disable=protected-access

  step.cache_size = cache_size
  return step
