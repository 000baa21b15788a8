"""Painting with units: stroke masks and unit edits turned into one composed edit per layer.

GANPaint-style editing sends a list of strokes, each "these units of this layer, at these
levels, inside this mask". The paint server (`experiments/paint/`) is a thin web layer;
the pure parts live here so they can be tested and reused without a server:

  * masks arrive as PNG data URLs or '0'/'1' rasters and are decoded to `[H, W]` float arrays
    (PNGs by `jaxdissect.masks`, the rule `ablate --mask` reads files by), with errors that
    name what was wrong (not base64, not a PNG, wrong size);
  * a variable number of strokes is packed into fixed-size arrays (`pack_strokes`), so one
    compiled generator serves every request of a batch size: unused slots edit nothing;
  * `composed_edits` pools each stroke's mask to each layer's grid and composes the strokes in
    order with `intervene.compose` (the original server's compositing rule, spec §8).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxdissect import intervene
from jaxdissect.errors import check_choice
from jaxdissect.masks import check_mask_size, read_png_mask
from jaxdissect.model import Edit

PNG_PREFIX = "data:image/png;base64,"
POOLINGS = ("max", "mean")


class Stroke(NamedTuple):
  """One intervention: set `units` of `layer` to `value` with weight `alpha` inside `mask`.

  `alpha` and `value` are `[len(units)]` float arrays; `mask` is `[H, W]` in [0, 1] at image
  resolution, or None for everywhere; `pooling` ("max" or "mean") maps it to the layer's grid.
  """

  layer: str
  units: np.ndarray
  alpha: np.ndarray
  value: np.ndarray
  mask: np.ndarray | None
  pooling: str = "max"


class PackedStrokes(NamedTuple):
  """Strokes padded to a fixed count M: a pytree whose shapes never depend on the request.

  `masks` `[M, H, W]`; `mean_pool` `[M]` (True where the stroke pools by mean); per edited layer
  `alpha[layer]` and `value[layer]` `[M, C]`; `count` (int32) strokes in use, in slots 0..count-1.
  Padding slots and strokes of other layers have alpha 0 there, which leaves the activations
  untouched.
  """

  masks: jax.Array
  mean_pool: jax.Array
  alpha: dict[str, jax.Array]
  value: dict[str, jax.Array]
  count: jax.Array


def decode_mask(text: str, size: tuple[int, int]) -> np.ndarray:
  """A mask given as a PNG data URL or a '0'/'1' raster -> `[H, W]` float32 of 0s and 1s."""
  if text.startswith("data:"):
    return decode_png_mask(text, size)
  return decode_bit_mask(text, size)


def decode_png_mask(data_url: str, size: tuple[int, int]) -> np.ndarray:
  """A `data:image/png;base64,...` mask of exactly `size` (H, W) -> `[H, W]` float32 of 0/1.

  Pixels are inside by `jaxdissect.masks.mask_from_image`: where alpha > 0 (a canvas stroke on a
  transparent canvas), or for PNGs without alpha where the grey level is > 127 (white on black).
  """
  if not data_url.startswith(PNG_PREFIX):
    raise ValueError(f"mask data URL starts with {data_url[:30]!r}; expected {PNG_PREFIX!r}")
  try:
    raw = base64.b64decode(data_url[len(PNG_PREFIX):], validate=True)
  except (binascii.Error, ValueError):
    raise ValueError("mask data URL does not hold valid base64") from None
  return read_png_mask(raw, size)


def decode_bit_mask(bits: str, size: tuple[int, int]) -> np.ndarray:
  """A row-major string of H * W '0'/'1' characters (whitespace ignored) -> `[H, W]` float32."""
  flat = "".join(bits.split())
  height, width = size
  if len(flat) != height * width:
    raise ValueError(f"mask raster has {len(flat)} bits; expected {height} x {width} = "
                     f"{height * width} ('0'/'1', row by row), or a PNG data URL")
  bad = set(flat) - {"0", "1"}
  if bad:
    raise ValueError(f"mask raster holds {''.join(sorted(bad))[:10]!r}; only '0' and '1' are "
                     "allowed")
  return (np.frombuffer(flat.encode(), np.uint8) == ord("1")).reshape(height, width).astype(
      np.float32)


def png_data_url(image: np.ndarray) -> str:
  """`[H, W, 3]` uint8 -> a `data:image/png;base64,...` URL."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="PNG")
  return PNG_PREFIX + base64.b64encode(buffer.getvalue()).decode("ascii")


def make_stroke(layer: str, units: Sequence[int], alpha: float | Sequence[float],
                value: float | Sequence[float], mask: np.ndarray | None, pooling: str,
                num_units: int) -> Stroke:
  """A validated `Stroke`: units in range and distinct, alpha/value scalars or one per unit."""
  check_choice("pooling", pooling, POOLINGS)
  units = np.asarray(units, np.int64).reshape(-1)
  if units.size == 0:
    raise ValueError(f"an intervention on {layer} lists no units")
  bad = units[(units < 0) | (units >= num_units)]
  if bad.size:
    raise ValueError(f"unit {int(bad[0])} is out of range for {layer}, which has units "
                     f"0..{num_units - 1}")
  if np.unique(units).size != units.size:
    raise ValueError(f"units of {layer} repeat: {units.tolist()}; list each unit once")
  per_unit = [_per_unit(name, v, units.size) for name, v in (("alpha", alpha), ("value", value))]
  if not np.all((per_unit[0] >= 0) & (per_unit[0] <= 1)):
    raise ValueError(f"alpha {per_unit[0].tolist()} is outside [0, 1]")
  return Stroke(layer, units, per_unit[0], per_unit[1], mask, pooling)


def _per_unit(name: str, v: float | Sequence[float], k: int) -> np.ndarray:
  """A scalar or `[k]` list as a finite `[k]` float32 array."""
  arr = np.asarray(v, np.float64).reshape(-1)
  if arr.size not in (1, k):
    raise ValueError(f"{name} has {arr.size} entries for {k} units; give one number or one per "
                     "unit")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name} {arr.tolist()} is not finite")
  return np.broadcast_to(arr, (k,)).astype(np.float32)


def pack_strokes(strokes: Sequence[Stroke], layer_units: Mapping[str, int],
                 size: tuple[int, int], max_strokes: int) -> PackedStrokes:
  """Pads `strokes` to `max_strokes` slots over the layers `layer_units` (name -> channels)."""
  if len(strokes) > max_strokes:
    raise ValueError(f"{len(strokes)} interventions; at most {max_strokes} fit in one request")
  masks = np.zeros((max_strokes, *size), np.float32)
  mean_pool = np.zeros((max_strokes,), bool)
  alpha = {name: np.zeros((max_strokes, c), np.float32) for name, c in layer_units.items()}
  value = {name: np.zeros((max_strokes, c), np.float32) for name, c in layer_units.items()}
  for i, s in enumerate(strokes):
    check_choice("layer", s.layer, layer_units)
    if s.mask is None:
      masks[i] = 1.0
    else:
      check_mask_size(np.shape(s.mask), size)
      masks[i] = s.mask
    mean_pool[i] = s.pooling == "mean"
    alpha[s.layer][i, s.units] = s.alpha
    value[s.layer][i, s.units] = s.value
  return PackedStrokes(masks, mean_pool, alpha, value, np.int32(len(strokes)))


def composed_edits(packed: PackedStrokes, grids: Mapping[str, tuple[int, int]]
                   ) -> dict[str, Edit]:
  """One `[h, w, C]` edit per layer of `grids` (name -> featuremap (h, w)): the packed strokes'
  edits, masks pooled to the layer's grid, composed in order (traceable under jit).

  Only the `count` strokes in use are composed, and a layer no stroke edits skips the work
  (both decided at run time, so the compiled function stays the same).
  """
  edits = {}
  for name, (h, w) in grids.items():
    alpha, value = packed.alpha[name], packed.value[name]
    none = Edit(jnp.zeros((h, w, alpha.shape[1])), jnp.zeros((h, w, alpha.shape[1])))

    def compose_strokes(alpha=alpha, value=value, h=h, w=w, none=none) -> Edit:
      cells = jnp.where(packed.mean_pool[:, None, None],
                        intervene.pool_mask(packed.masks, (h, w), "mean"),
                        intervene.pool_mask(packed.masks, (h, w), "max"))

      def step(i: jax.Array, acc: Edit) -> Edit:
        return intervene.compose([acc, Edit(cells[i][..., None] * alpha[i], value[i])])

      return jax.lax.fori_loop(0, packed.count, step, none)

    edits[name] = jax.lax.cond(jnp.any(alpha > 0), compose_strokes, lambda none=none: none)
  return edits


def masked_features(acts: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per image and unit, `[B, C]` each: the mean of `acts` `[B, h, w, C]` weighted by the mask
  mean-pooled to the grid, and the max of `acts` times the max-pooled mask (spec §8 features)."""
  h, w = acts.shape[1:3]
  weight = intervene.pool_mask(mask, (h, w), "mean")[None, :, :, None]
  cover = intervene.pool_mask(mask, (h, w), "max")[None, :, :, None]
  mean = jnp.sum(acts * weight, axis=(1, 2)) / jnp.maximum(jnp.sum(weight), 1e-12)
  return mean, jnp.max(acts * cover, axis=(1, 2))
