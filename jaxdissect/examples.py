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

from jaxdissect.model import Generator
from jaxdissect.images import to_uint8
from jaxdissect.latents import Latents, pad_rows


class UnitExamples(NamedTuple):
  """For one layer: `images [U, k, H, W, 3]` uint8 and `maps [U, k, h, w]` float32.

  Slots of units with fewer than k examples (index -1) hold zeros.
  """

  images: np.ndarray
  maps: np.ndarray


def top_examples(gen: Generator, top_indices: Mapping[str, np.ndarray], latents: Latents,
                 batch_size: int = 100,
                 progress: Callable[[str, int, int], None] | None = None
                 ) -> dict[str, UnitExamples]:
  """Regenerates each layer's top images (`top_indices[layer]` is `[U, k]`, -1 = none) from
  the `latents` the dissection counted them over; `progress(stage, done, total)` per batch."""
  layers = tuple(top_indices)
  wanted = np.unique(np.concatenate([np.asarray(v).ravel() for v in top_indices.values()]))
  wanted = wanted[wanted >= 0]
  run = jax.jit(lambda z: gen.apply_fn(gen.params, z, capture=layers))
  out: dict[str, UnitExamples] = {}
  chunks = [wanted[i:i + batch_size] for i in range(0, len(wanted), batch_size)]
  done = 0
  for chunk in chunks:
    z = pad_rows(latents.rows(chunk, gen.latent_shape), batch_size)  # one shape: no retrace
    images, acts = run(jnp.asarray(z))
    images = np.asarray(to_uint8(images[: len(chunk)]))
    for layer in layers:
      idx = np.asarray(top_indices[layer])
      a = np.asarray(acts[layer][: len(chunk)], np.float32)  # [b, h, w, U]
      if layer not in out:
        units, k = idx.shape
        out[layer] = UnitExamples(np.zeros((units, k, *images.shape[1:]), np.uint8),
                                  np.zeros((units, k, *a.shape[1:3]), np.float32))
      pos = np.searchsorted(chunk, idx)
      hit = (idx >= 0) & (pos < len(chunk)) & (chunk[np.minimum(pos, len(chunk) - 1)] == idx)
      u, r = np.nonzero(hit)
      out[layer].images[u, r] = images[pos[u, r]]
      out[layer].maps[u, r] = a[pos[u, r], :, :, u]
    done += len(chunk)
    if progress is not None:
      progress("top images", done, len(wanted))
  return out


def example_count(top_indices: Sequence[int] | np.ndarray) -> int:
  """How many of a unit's `[k]` top slots hold an image."""
  return int(np.sum(np.asarray(top_indices) >= 0))
