"""Top-activating example images of every unit, regenerated from their z indices.

The one-pass tally keeps only (value, image index) pairs per unit, never images: memory stays
flat in n. The report then needs the k images where each unit fires hardest, together with that
unit's featuremap on them to draw the highlighted region. Since latents are deterministic per
index, those images are regenerated here, once per distinct image, generator only.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect import fit, steps
from jaxdissect.model import Generator
from jaxdissect.images import to_uint8
from jaxdissect.latents import Latents, pad_rows


class UnitExamples(NamedTuple):
  """For one layer: each distinct top image once, `pool [M, H, W, 3]` uint8, the pool row of
  every unit's slot, `slots [U, k]` (-1: none), and `maps [U, k, h, w]` float32 (zeros where
  none). Images are not copied per unit: 512 units x 10 slots of 256x256 images would be 1 GB.
  """

  pool: np.ndarray
  slots: np.ndarray
  maps: np.ndarray

  def images(self, unit: int) -> np.ndarray:
    """`[k, H, W, 3]` uint8 top images of `unit` (zeros in empty slots)."""
    rows = self.slots[unit]
    return np.where((rows >= 0)[:, None, None, None], self.pool[np.maximum(rows, 0)], 0)


def top_examples(gen: Generator, top_indices: Mapping[str, np.ndarray], latents: Latents,
                 batch_size: int = 100,
                 progress: Callable[[str, int, int], None] | None = None
                 ) -> dict[str, UnitExamples]:
  """Regenerates each layer's top images (`top_indices[layer]` is `[U, k]`, -1 = none) from
  the `latents` the dissection counted them over; `progress(stage, done, total)` per batch."""
  layers = tuple(top_indices)
  generate = lambda z: gen.apply_fn(gen.params, z, capture=layers)
  wanted = np.unique(np.concatenate([np.asarray(v).ravel() for v in top_indices.values()]))
  wanted = wanted[wanted >= 0]
  run = jax.jit(steps.in_chunks(generate, images_per_call(generate, gen, batch_size)))
  pool = None
  maps: dict[str, np.ndarray] = {}
  for start in range(0, len(wanted), batch_size):
    chunk = wanted[start:start + batch_size]
    z = pad_rows(latents.rows(chunk, gen.latent_shape), batch_size)  # one shape: no retrace
    images, acts = run(jnp.asarray(z))
    # Channels past the colour ones are not picture (a dataset's exact labels, `imagesource`).
    images = np.asarray(to_uint8(images[: len(chunk), ..., :3]))
    if pool is None:
      pool = np.zeros((len(wanted), *images.shape[1:]), np.uint8)
    pool[start:start + len(chunk)] = images
    for layer in layers:
      idx = np.asarray(top_indices[layer])
      a = np.asarray(acts[layer][: len(chunk)], np.float32)  # [b, h, w, U]
      if layer not in maps:
        maps[layer] = np.zeros((*idx.shape, *a.shape[1:3]), np.float32)
      pos = np.searchsorted(chunk, idx)
      hit = (idx >= 0) & (pos < len(chunk)) & (chunk[np.minimum(pos, len(chunk) - 1)] == idx)
      u, r = np.nonzero(hit)
      maps[layer][u, r] = a[pos[u, r], :, :, u]
    if progress is not None:
      progress("top images", start + len(chunk), len(wanted))
  if pool is None:  # no unit has an image: an empty pool keeps the shapes
    pool = np.zeros((0, 1, 1, 3), np.uint8)
  out = {}
  for layer in layers:
    idx = np.asarray(top_indices[layer])
    slots = np.where(idx >= 0, np.searchsorted(wanted, idx), -1)
    layer_maps = maps.get(layer, np.zeros((*idx.shape, 1, 1), np.float32))
    out[layer] = UnitExamples(pool, slots, layer_maps)
  return out


def images_per_call(generate: Callable, gen: Generator, batch: int) -> int:
  """Images per generator call: all of `batch` where it fits, else the largest divisor that
  fits the device's memory (`fit`), or on a CPU `fit.HOST_CALL_BYTES` of temporaries."""
  one = jax.ShapeDtypeStruct((1, *gen.latent_shape), jnp.float32)
  budget = fit.device_budget(jax.local_devices()[:1])
  if budget is None:
    return fit.host_chunk(generate, one, batch)
  whole = jax.ShapeDtypeStruct((batch, *gen.latent_shape), jnp.float32)
  return fit.largest_chunk(lambda c: steps.in_chunks(generate, c), [whole], fit.divisors(batch),
                           budget).chunk


def example_count(top_indices: Sequence[int] | np.ndarray) -> int:
  """How many of a unit's `[k]` top slots hold an image."""
  return int(np.sum(np.asarray(top_indices) >= 0))
