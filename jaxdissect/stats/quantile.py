"""Per-unit streaming quantiles in fixed memory: a compactor sketch that runs under `jit`.

Dissection needs, for every unit, the value above which its top 1% of (upsampled) activations
lie, over millions of pixels per unit. Keeping the values is out of the question and sorting them
per batch is slow, so every unit gets a mergeable compactor sketch in the style of Manku et al. and
KLL, laid out with static shapes so the whole update is one XLA program:

* `J` levels, each a buffer of `2k` slots per unit. An item on level `j` stands for
  `2**(j + shift)` stream values. All units see the same number of rows, so fills are scalars and
  control flow is shared; only values differ per unit.
* A batch is cut into blocks of at most `k` rows. A short block (small batches) goes to level 0:
  as is while `shift == 0`, so short streams stay exact; once `shift > 0` first sorted and thinned
  to every `2**shift`-th value from a random offset (the same as `shift` compactions at once).
* When a level holds `k` or more items it is *compacted*: sorted, and every other item from a
  random offset moves one level up (weights double). For any query value this changes the rank by
  at most one item's weight and by zero in expectation. Raw values are the exception: level 0
  compacts straight to the level of weight `2**raw_jump` (every `2**raw_jump`-th item), and a
  full block (`k` rows) is sorted and thinned to that weight as it arrives. Each value is then
  sorted about 1.25 times instead of twice (`1 + 1/2 + 1/4 + ...`), for a modestly larger rank
  error (`quantile_sketch`'s `raw_jump`).
* When the top level is full, the sketch *expands*: level 0 is compacted upwards, the levels
  move down one slot and `shift` grows by one. Memory therefore never grows with the stream.

Speed comes from never moving the `[J, U, 2k]` level array as a whole: levels sit in a ring
(logical level `l` lives in slot `(base + l) % J`, so expanding only bumps `base`), slots past a
level's fill are stale and ignored rather than cleared, and the two heavy steps (turning a raw
block into items, and compacting a level) write straight into that array. On the CPU backend
they are numpy code run through `buffer_callback` on XLA's own buffers, the level array aliased
in place (`pure_callback` copies operands and results, which costs as much as the sort), working
through the units in cache-sized pieces (transpose, keys, sort, pick) with one thread per core:
numpy's SIMD sort is about 7x faster than XLA's CPU sort. Other backends run the same steps in
jnp; both paths write the same entries, so states are bit-identical. Jit `update` with
`donate_argnums=0` in a streaming loop: otherwise XLA copies the level array on every call.

This module holds the sketch: its state, invariants and algebra, and which kernels run where.
The numpy kernels live in `quantile_cpu`, the jnp ones in `quantile_jnp`, and the int32 keys
all three share in `quantile_keys`.

Values are stored as order-preserving int32 keys. Non-finite inputs are counted in `nonfinite` and
left out, never mixed into quantiles. Rank error is below 1e-3 at the default size on adversarial
streams (see `tests/test_stats_quantile.py`); min and max are tracked exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.stats.base import Stat
from jaxdissect.stats.backend import numpy_on_cpu
from jaxdissect.stats.quantile_cpu import host_compact, host_ingest
from jaxdissect.stats.quantile_jnp import device_compact, device_ingest, write
from jaxdissect.stats.quantile_keys import EMPTY, LOWEST, from_key, to_key

__all__ = ["EMPTY", "QuantileState", "cdf", "compact_level", "from_key", "ingest_block",
           "memory_bytes", "quantile_sketch", "quantiles", "to_key"]


class QuantileState(NamedTuple):
  """State of `quantile_sketch`.

  Attributes:
    keys: `[J, U, 2k]` int32 order-preserving keys, one ring slot per level: logical level `l`
      is slot `(base + l) % J`. Only a slot's first `fill` entries are items (`EMPTY` among them
      marks a hole of weight 0); entries past `fill` are stale.
    fill: `[J]` int32 items held in each slot (identical for all units).
    base: `[]` int32 slot of logical level 0.
    shift: `[]` int32; an item on logical level j weighs `2**(j + shift)`.
    count: `[U]` int32 finite values seen per unit.
    nonfinite: `[U]` int32 NaN/inf values seen (and excluded) per unit.
    minimum: `[U]` float32 exact minimum of the finite values (+inf if none).
    maximum: `[U]` float32 exact maximum (-inf if none).
    rng: `[2]` uint32 raw PRNG key data for the compaction offsets.
  """

  keys: jax.Array
  fill: jax.Array
  base: jax.Array
  shift: jax.Array
  count: jax.Array
  nonfinite: jax.Array
  minimum: jax.Array
  maximum: jax.Array
  rng: jax.Array


# ---- the two heavy kernels, in place: numpy on the CPU backend, jnp elsewhere ----
#
# Both write into the level array `keys` `[J, U, 2k]`: numpy through `buffer_callback` with the
# array aliased to the output (`quantile_cpu`), jnp through `dynamic_update_slice`
# (`quantile_jnp`). Both write exactly the same entries, so the two paths give bit-identical
# states.


def ingest_block(keys: jax.Array, blocks: jax.Array, index, slot, at, stride,
                 offset: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Appends the level-0 items of the raw values `blocks[index]` to a level, in place.

  Args:
    keys: `[J, U, 2k]` int32 level array.
    blocks: `[n, b, U]` float32 raw values (NaN pads count as non-finite).
    index: which block.
    slot: level slot to write; the items go to `keys[slot, :, at:at + ceil(b / stride)]`.
    at: first slot column to write.
    stride: thinning step `2**shift`: every `stride`-th value of the sorted block from `offset`
      (with 1 the keys go in unsorted).
    offset: `[U]` int32 start of the pick, in `[0, stride)`.

  Returns:
    The new `keys` and `[3, U]` int32 per-unit statistics of the block: finite count, smallest
    key, largest key (`EMPTY` / int32 min when a unit has no finite value).
  """
  return numpy_on_cpu(host_ingest, device_ingest, keys, blocks,
                       jnp.asarray(index, jnp.int32), slot, at, stride, offset.astype(jnp.int32))


def compact_level(keys: jax.Array, src, n, offset: jax.Array, stride, dst, at) -> jax.Array:
  """Sorts the first `n` items of slot `src` and writes every `stride`-th one, from `offset`
  `[U]` (in `[0, stride)` per unit), to `keys[dst, :, at:at + ceil(n / stride)]`, in place.
  Returns the new `keys`."""
  return numpy_on_cpu(host_compact, device_compact, keys, src, n, offset.astype(jnp.int32),
                       stride, dst, at)


# ---- the sketch ----


def _split(state: QuantileState) -> tuple[QuantileState, jax.Array]:
  key = jax.random.wrap_key_data(state.rng)
  key, sub = jax.random.split(key)
  return state._replace(rng=jax.random.key_data(key)), sub


def _slot(state: QuantileState, level) -> jax.Array:
  """Ring slot of logical `level`."""
  return (state.base + level) % state.keys.shape[0]


def _jump(state: QuantileState, level, raw_jump: int) -> jax.Array:
  """Levels a compaction of logical `level` moves its items up: `raw_jump - shift` for level 0
  while that is above 1 (so level-0 items always land at weight `2**raw_jump` or more), else 1."""
  return jnp.where(level == 0, jnp.maximum(raw_jump - state.shift, 1), 1)


def _compact(state: QuantileState, level, expand, raw_jump: int) -> QuantileState:
  """Moves every `2**jump`-th item (random offset per unit) of logical `level` up `jump` levels
  (`_jump`; usually one: every other item, one level up).

  With `expand` (then `level` is 0) the emptied slot becomes the new top level: `base` and `shift`
  grow by one, so every level moves down one slot and keeps its items' weights.
  """
  state, sub = _split(state)
  jump = _jump(state, level, raw_jump)
  stride = jnp.left_shift(jnp.int32(1), jump)
  src, dst = _slot(state, level), _slot(state, level + jump)
  n = state.fill[src]
  offset = jax.random.randint(sub, (state.keys.shape[1],), 0, stride, dtype=jnp.int32)
  keys = compact_level(state.keys, src, n, offset, stride, dst, state.fill[dst])
  # A leftover short of a full stride may pick a hole.
  fill = state.fill.at[src].set(0).at[dst].add((n + stride - 1) // stride)
  expand = jnp.asarray(expand, jnp.int32)
  return state._replace(keys=keys, fill=fill, base=(state.base + expand) % state.keys.shape[0],
                        shift=state.shift + expand)


def _resolve(state: QuantileState, raw_jump: int) -> QuantileState:
  """Compacts until no level holds `k` or more items, always the highest full level first.

  Working from the top keeps the invariant that a compaction's target level is not full, so a
  level never holds more than `2k - 1` items. A full top level triggers an expansion.
  """
  num_levels = state.keys.shape[0]
  k = state.keys.shape[-1] // 2

  def step(s):
    logical_fill = s.fill[(s.base + jnp.arange(num_levels)) % num_levels]
    j = num_levels - 1 - jnp.argmax(logical_fill[::-1] >= k)
    expand = j == num_levels - 1
    return _compact(s, jnp.where(expand, 0, j), expand, raw_jump)

  return jax.lax.while_loop(lambda s: jnp.any(s.fill >= k), step, state)


def _push_block(carry, blocks: jax.Array, index, raw_jump: int):
  """Folds the raw values `blocks[index]` (`[b, U]`) into the sketch and into the running
  count / min key / max key, then resolves.

  A short block (`b < k`, small batches) goes to level 0 at level-0 weight: every
  `2**shift`-th sorted value from a random offset, all of them (unsorted) while `shift == 0`,
  so short streams stay exact. A full block (`b == k`) is sorted and thinned to every
  `2**max(shift, raw_jump)`-th value straight away, onto the level of that weight: what a
  compaction of level 0 would do to it anyway, in one pass over the values instead of two.
  """
  state, count, low, high = carry
  _, b, num_units = blocks.shape
  state, sub = _split(state)
  full = b == state.keys.shape[-1] // 2
  level = jnp.maximum(raw_jump - state.shift, 0) if full else jnp.int32(0)
  stride = jnp.left_shift(jnp.int32(1), state.shift + level)
  offset = jax.random.randint(sub, (num_units,), 0, stride, dtype=jnp.int32)
  slot = _slot(state, level)
  keys, stats = ingest_block(state.keys, blocks, index, slot, state.fill[slot], stride, offset)
  state = state._replace(keys=keys, fill=state.fill.at[slot].add((b - 1) // stride + 1))
  count, low, high = count + stats[0], jnp.minimum(low, stats[1]), jnp.maximum(high, stats[2])
  return _resolve(state, raw_jump), count, low, high


def _block_size(rows: int, k: int) -> tuple[int, int]:
  """Splits `rows` into `n` near-equal blocks of at most `k` rows (few pad rows)."""
  n = max(1, -(-rows // k))
  return n, -(-rows // n)


def quantile_sketch(num_units: int, k: int = 4096, num_levels: int = 8, seed: int = 0,
                    raw_jump: int | None = None) -> Stat:
  """A per-unit quantile sketch with rank error well under 1e-3 at the default size.

  Args:
    num_units: U, the number of columns (units) sketched side by side.
    k: level capacity; memory is `num_levels * 2k` int32 per unit, the rank error scales ~1/k.
    num_levels: J >= 3 levels before the sketch starts thinning its input.
    seed: seed of the compaction offsets (results are deterministic given it).
    raw_jump: how many levels a compaction of raw values (level 0 before any expansion) moves
      them up at once, keeping every `2**raw_jump`-th: each value is sorted about 1.25 times
      instead of twice. The price is some rank error (the low levels weigh little, but their
      memory sits idle until the sketch has expanded `raw_jump` times): up to 2x on the test
      streams at 10^6 values, still under half the 1e-3 bound. 1 is the plain one-level
      compactor; default `min(3, num_levels - 2)`.

  Returns:
    A `Stat`: `update(state, x)` takes `x` of shape `[..., U]` (every leading index is one
    observation per unit); `result(state, q)` returns `[len(q), U]` quantiles for `q` in [0, 1].
  """
  if num_levels < 3:
    raise ValueError(f"num_levels must be >= 3, got {num_levels}")
  if raw_jump is None:
    raw_jump = min(3, num_levels - 2)
  if not 1 <= raw_jump <= num_levels - 2:  # an expansion must never compact into the top level
    raise ValueError(f"raw_jump must be in [1, num_levels - 2] = [1, {num_levels - 2}], "
                     f"got {raw_jump}")
  if k < 2 or k % 2:
    raise ValueError(f"k must be an even number >= 2, got {k}")

  def init() -> QuantileState:
    return QuantileState(
        keys=jnp.full((num_levels, num_units, 2 * k), EMPTY, jnp.int32),
        fill=jnp.zeros((num_levels,), jnp.int32),
        base=jnp.int32(0),
        shift=jnp.int32(0),
        count=jnp.zeros((num_units,), jnp.int32),
        nonfinite=jnp.zeros((num_units,), jnp.int32),
        minimum=jnp.full((num_units,), jnp.inf, jnp.float32),
        maximum=jnp.full((num_units,), -jnp.inf, jnp.float32),
        rng=jax.random.key_data(jax.random.key(seed)),
    )

  def update(state: QuantileState, x: jax.Array) -> QuantileState:
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[-1] != num_units:
      raise ValueError(f"quantile_sketch.update got x of shape {list(x.shape)}, expected "
                       f"[..., {num_units}] (one column per unit)")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"quantile_sketch.update needs floating activations, got {x.dtype}")
    x = x.reshape(-1, num_units).astype(jnp.float32)
    rows = x.shape[0]
    n, b = _block_size(rows, k)
    blocks = jnp.pad(x, ((0, n * b - rows), (0, 0)), constant_values=jnp.nan).reshape(
        n, b, num_units)
    low = jnp.full((num_units,), EMPTY, jnp.int32)
    high = jnp.full((num_units,), LOWEST, jnp.int32)
    carry = (state, state.count, low, high)
    if n == 1:
      carry = _push_block(carry, blocks, 0, raw_jump)
    else:
      carry = jax.lax.fori_loop(0, n, lambda i, c: _push_block(c, blocks, i, raw_jump), carry)
    state, count, low, high = carry
    return state._replace(
        count=count,
        nonfinite=state.nonfinite + rows - (count - state.count),
        minimum=jnp.minimum(state.minimum, jnp.where(low == EMPTY, jnp.inf, from_key(low))),
        maximum=jnp.maximum(state.maximum, jnp.where(high == LOWEST, -jnp.inf,
                                                     from_key(high))),
    )

  def merge(a: QuantileState, b: QuantileState) -> QuantileState:
    if a.keys.shape != b.keys.shape:
      raise ValueError(f"cannot merge sketches of shapes {a.keys.shape} and {b.keys.shape}")
    catch_up = lambda s, t: jax.lax.while_loop(  # noqa: E731
        lambda u: u.shift < t.shift, lambda u: _resolve(_compact(u, 0, True, raw_jump), raw_jump),
        s)
    a, b = catch_up(a, b), catch_up(b, a)
    for j in range(num_levels):  # b is settled, so every level of b holds fewer than k items
      src, dst = _slot(b, j), _slot(a, j)
      items = jax.lax.dynamic_index_in_dim(b.keys, src, 0, keepdims=False)[:, :k]
      keys = write(a.keys, dst, a.fill[dst], items, b.fill[src])
      a = _resolve(a._replace(keys=keys, fill=a.fill.at[dst].add(b.fill[src])), raw_jump)
    rng = jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(a.rng), 1))
    return a._replace(
        count=a.count + b.count,
        nonfinite=a.nonfinite + b.nonfinite,
        minimum=jnp.minimum(a.minimum, b.minimum),
        maximum=jnp.maximum(a.maximum, b.maximum),
        rng=rng,
    )

  return Stat(init, update, merge, quantiles)


def _summary(state: QuantileState) -> tuple[jax.Array, jax.Array]:
  """Sorted values `[U, M+2]` with cumulative rank fractions (min at 0, max at 1)."""
  num_levels, num_units, slots = state.keys.shape
  level = (jnp.arange(num_levels) - state.base) % num_levels
  weights = jnp.exp2((level + state.shift).astype(jnp.float32))
  held = jnp.arange(slots)[None, :] < state.fill[:, None]
  keys = jnp.where(held[:, None, :], state.keys, EMPTY)
  keys = keys.transpose(1, 0, 2).reshape(num_units, num_levels * slots)
  w = jnp.broadcast_to(weights[:, None], (num_levels, slots)).reshape(-1)
  w = jnp.where(keys == EMPTY, 0.0, w[None, :])
  keys, w = jax.lax.sort((keys, w), dimension=1, num_keys=1)
  cw = jnp.cumsum(w, axis=1) - w / 2
  cw = cw / jnp.maximum(cw[:, -1:] + w[:, -1:] / 2, 1e-30)
  values = jnp.concatenate([state.minimum[:, None], from_key(keys), state.maximum[:, None]], 1)
  ranks = jnp.concatenate([jnp.zeros((num_units, 1)), cw, jnp.ones((num_units, 1))], 1)
  # Free slots sort last with weight 0: pin them to the maximum so interpolation stays in range.
  values = jnp.where(jnp.pad(keys, ((0, 0), (1, 1))) == EMPTY, state.maximum[:, None], values)
  values = values.at[:, 0].set(state.minimum)
  return values, ranks


def quantiles(state: QuantileState, q) -> jax.Array:
  """Quantiles `[len(q), U]` (`q` in [0, 1]); NaN for units that saw no finite value."""
  q = jnp.atleast_1d(jnp.asarray(q, jnp.float32))
  values, ranks = _summary(state)
  out = jax.vmap(lambda r, v: jnp.interp(q, r, v))(ranks, values)
  return jnp.where(state.count[None, :] > 0, out.T, jnp.nan)


def cdf(state: QuantileState, x) -> jax.Array:
  """Estimated fraction of each unit's values below `x` (`[N, U]` or `[U]`), clipped to [0, 1]."""
  x = jnp.asarray(x, jnp.float32)
  values, ranks = _summary(state)
  xs = jnp.atleast_2d(x)
  out = jax.vmap(lambda r, v, t: jnp.interp(t, v, r), in_axes=(0, 0, 1), out_axes=1)(
      ranks, values, xs)
  return out.reshape(x.shape)


def memory_bytes(state: QuantileState) -> int:
  """Bytes held by a sketch state (fixed by its construction, independent of the stream)."""
  return int(sum(np.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(state)))
