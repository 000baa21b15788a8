"""The warmup: the first images' activations predict where each unit's threshold will fall.

The one-pass engine tallies each unit only over a bracket of values (or a grid of levels) that the
warmup chose, so this is what makes one pass enough. Two ways to find the warmup's order
statistics give the same brackets: on the host (numpy partitions the upsampled activations,
fastest on a CPU) or on the devices (a running `top_k`, so only `[U, 3qN]` values per unit ever
leave them: 100 images of an 8x8x512 layer at 128x128 are 3.4 GB upsampled).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdissect import sharding
from jaxdissect.stats import upsampled_kernels
from jaxdissect.stats.backend import over_units, worth_threads
from jaxdissect.stats.topk import largest_values
from jaxdissect.upsample import upsample


def host_brackets(rule: Any, layers: Mapping[str, tuple[int, int, int]],
                  seg_size: tuple[int, int], batches: Iterable[Mapping[str, np.ndarray]],
                  rows: int, chunk_bytes: int = 16 << 20) -> dict[str, Any]:
  """Per-layer brackets from host activation batches `{layer: acts}` of `rows` images in all.

  Host memory stays at one upsampled chunk of about `chunk_bytes` plus what the rule keeps per
  unit, whatever the warmup's size (100 images of an 8x8x512 layer at 128x128 are 3.4 GB
  upsampled): a rule that needs only each unit's largest values (`rule.from_largest`) gets a
  running top-`keep`; others (IQR grids) the values at the fixed positions `rule.sample(total)`.
  """
  total = rows * seg_size[0] * seg_size[1]
  if all(upsampled_kernels.fuses((0, h, w), seg_size) for h, w, _ in layers.values()):
    return _fused_brackets(rule, layers, seg_size, batches, total)
  up = _upsampler(tuple(seg_size))
  sample = None if rule.from_largest else rule.sample(total)
  kept: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
  seen = {layer: 0 for layer in layers}
  bad = {layer: np.zeros(units, bool) for layer, (_, _, units) in layers.items()}
  for acts in batches:
    for layer, (_, _, units) in layers.items():
      per_image = units * seg_size[0] * seg_size[1] * 4
      step = max(1, chunk_bytes // per_image)
      for start in range(0, len(acts[layer]), step):
        # [U, pixels] rows: numpy partitions contiguous rows several times faster than columns.
        values = np.ascontiguousarray(
            np.asarray(up(acts[layer][start:start + step])).reshape(-1, units).T)
        bad[layer] |= ~np.all(np.isfinite(values), axis=1)
        if rule.from_largest:
          kept[layer] = [largest_values(kept[layer] + [values], rule.keep(total))]
        else:
          first, seen[layer] = seen[layer], seen[layer] + values.shape[1]
          lo, hi = np.searchsorted(sample, [first, seen[layer]])
          kept[layer].append(values[:, sample[lo:hi] - first])
  brackets = {}
  for layer in layers:
    _check_finite(layer, bad[layer])
    brackets[layer] = (rule.bracket_of_largest(kept[layer][0], total) if rule.from_largest
                       else rule.warmup_bracket(kept[layer]))
  return brackets


def _fused_brackets(rule: Any, layers: Mapping[str, tuple[int, int, int]],
                    seg_size: tuple[int, int], batches: Iterable[Mapping[str, np.ndarray]],
                    total: int) -> dict[str, Any]:
  """`host_brackets` by compiled loops that interpolate the upsampled values as they read them
  (`upsampled_kernels`), so no upsampled map is written: a rule `from_largest` gets each unit's
  running top-`keep` (rows that cannot enter it skipped), others the values at `rule.sample`."""
  pixels = seg_size[0] * seg_size[1]
  if rule.from_largest:
    keep = rule.keep(total)
    kept = {layer: np.full((units, keep), -np.inf, np.float32)
            for layer, (_, _, units) in layers.items()}
    count = {layer: np.zeros(units, np.int64) for layer, (_, _, units) in layers.items()}
  else:
    sample = rule.sample(total).astype(np.int64)
    kept = {layer: [] for layer in layers}
  bad = {layer: np.zeros(units, bool) for layer, (_, _, units) in layers.items()}
  seen = 0
  for acts in batches:
    rows = 0
    for layer, (h, w, units) in layers.items():
      raw = np.ascontiguousarray(acts[layer], np.float32)
      rows = raw.shape[0]
      bad[layer] |= ~np.all(np.isfinite(raw.reshape(-1, units)), axis=0)
      yi0, yi1, yf, _ = upsampled_kernels.axis_table(h, seg_size[0])
      xi0, xi1, xf, xs = upsampled_kernels.axis_table(w, seg_size[1])
      if rule.from_largest:
        fold = functools.partial(upsampled_kernels.largest, kept[layer], count[layer], raw, yi0,
                                 yi1, yf, xf, xs)
        work = raw.size * pixels // (h * w)
      else:
        lo, hi = np.searchsorted(sample, [seen * pixels, (seen + rows) * pixels])
        out = np.empty((units, hi - lo), np.float32)
        fold = functools.partial(upsampled_kernels.gather, out, raw, sample[lo:hi] - seen * pixels,
                                 yi0, yi1, yf, xi0, xi1, xf)
        kept[layer].append(out)
        work = out.size
      over_units(lambda part, fold=fold: fold(part.start, part.stop), units, worth_threads(work))
    seen += rows
  brackets = {}
  for layer in layers:
    _check_finite(layer, bad[layer])
    brackets[layer] = (rule.bracket_of_largest(kept[layer], total) if rule.from_largest
                       else rule.warmup_bracket(kept[layer]))
  return brackets


def device_brackets(rule: Any, layers: Mapping[str, tuple[int, int, int]],
                    seg_size: tuple[int, int], mesh: Mesh,
                    batches: Iterable[tuple[int, Mapping[str, jax.Array]]]) -> dict[str, Any]:
  """`host_brackets` (a rule `from_largest`) with the order statistics found
  on the devices. `batches` yields `(rows, {layer: device acts})`, the first `rows` of each
  batch being real images; the running top-k is replicated over the mesh."""
  batches = list(batches)
  total = sum(rows for rows, _ in batches) * seg_size[0] * seg_size[1]
  keep = rule.keep(total)
  replicated = NamedSharding(mesh, P())
  place = functools.partial(sharding.replicate, mesh)
  kept = {layer: place(np.full((units, keep), -np.inf, np.float32))
          for layer, (_, _, units) in layers.items()}
  bad = {layer: place(np.zeros(units, np.int32)) for layer, (_, _, units) in layers.items()}
  for rows, acts in batches:
    fold = _fold_largest(seg_size, rows, replicated)
    for layer in layers:
      kept[layer], bad[layer] = fold(kept[layer], bad[layer], acts[layer])
  brackets = {}
  for layer in layers:
    _check_finite(layer, _local_copy(bad[layer]) > 0)
    brackets[layer] = rule.bracket_of_largest(_local_copy(kept[layer]), total)
  return brackets


@functools.lru_cache(maxsize=64)
def _upsampler(seg_size: tuple[int, int]) -> Callable:
  """Jitted float32 upsampling to `seg_size`, built once per size (not once per dissection)."""
  return jax.jit(lambda a: upsample(a.astype(jnp.float32), seg_size))


def _check_finite(layer: str, bad: np.ndarray) -> None:
  if bad.any():
    units = np.nonzero(bad)[0]
    raise FloatingPointError(f"{layer}: non-finite activations in units {units[:10].tolist()}; "
                             "dissection needs finite ones")


def _local_copy(x: jax.Array) -> np.ndarray:
  """A replicated array's value on this process."""
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

  return jax.jit(fold, out_shardings=(replicated, replicated), donate_argnums=(0, 1))


def on_device(rule: Any, where: str) -> bool:
  """Whether the warmup ranks on the devices: `where` is "host", "device" or "auto" (devices
  unless they are CPUs); rules that need every value (IQR grids) always use the host."""
  if not rule.from_largest:
    return False
  return where == "device" or (where == "auto" and jax.default_backend() != "cpu")


def gathered(acts: Mapping[str, jax.Array], rows: int) -> dict[str, np.ndarray]:
  """Host copies of the first `rows` of every layer's activations (from all devices)."""
  return {layer: sharding.gather_rows(a)[:rows] for layer, a in acts.items()}
