"""A colour segmenter that needs no weights: each pixel named by one of 11 basic colour terms.

GAN Dissection labels units with colours as well as objects and parts, and colour is the one
concept family that any generator draws, whatever its training data. Broden's colour concepts are
the 11 basic colour terms (black, blue, brown, green, grey, orange, pink, purple, red, white,
yellow); this module names pixels with them by a fixed rule in a perceptual space, so a face GAN,
a scene GAN or a user's own model can be dissected for colour with no trained segmenter.

The rule, per pixel (images in [-1, 1], NHWC):
  1. Optionally average-pool the image by `downsample` (area resize; colours mix in sRGB).
  2. Convert sRGB to CIELAB under D65 (IEC 61966-2-1 transfer curve, the sRGB->XYZ matrix and
     the CIE 1976 L*a*b* formulas with white point Xn, Yn, Zn = 0.95047, 1, 1.08883).
  3. Each colour has a few prototypes (`PROTOTYPES`, 8-bit sRGB): the pure or CSS colour of its
     name, CSS/X11 variants where one fits (darkblue, royalblue, saddlebrown, darkolivegreen,
     hotpink, darkviolet, darkred, gold) and hand-picked dark, light and muted shades, so that
     a term covers its whole region rather than one point. A colour's distance is the squared
     Euclidean Lab distance to its nearest prototype.
  4. Achromatic rule: a pixel of chroma C = sqrt(a^2 + b^2) at most `CHROMA_FLOOR` (6 Lab units,
     a faint tint) is black, grey or white, whatever the prototypes. Every chromatic colour's
     distance gets a penalty of `ACHROMATIC_PENALTY` (1000) for such pixels, fading linearly to 0
     at C = `CHROMA_FLOOR + CHROMA_RAMP` (12), so probabilities stay continuous. The penalty
     exceeds any near-neutral pixel's distance to its nearest achromatic prototype (those lie on
     the L axis, and no lightness is more than 18 units from one of them, so that distance is at
     most 18^2 + 6^2 = 360), which makes the rule hold. Among black, grey and white the pixel is
     named by lightness alone (grey prototypes at L = 36, 54 and 80 put the boundaries near
     L = 18 and L = 90, i.e. sRGB levels of about 45 and 225). With the shipped prototypes,
     plain Lab distance already names most pixels of chroma below 12 to 20 achromatic; the rule
     makes that a guarantee that holds whatever prototypes the params carry, and settles faint
     pinks near white whose nearest prototype would otherwise be a pastel.
  5. `label_fn`: the colour of smallest distance (concept indices 1..11). `segment_fn`: a softmax
     of -distance / temperature over the 11 colours, with column 0 ('-') exactly 0, so its
     argmax is `label_fn`'s label.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxdissect.model import Segmenter

COLOURS = ("black", "blue", "brown", "green", "grey", "orange", "pink", "purple", "red", "white",
           "yellow")
CONCEPTS = (("-", "-"),) + tuple((name, "color") for name in COLOURS)
ACHROMATIC = ("black", "grey", "white")

# 8-bit sRGB prototypes of each colour term, in `COLOURS` order.
PROTOTYPES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "black": ((0, 0, 0),),
    "blue": ((0, 0, 255), (0, 0, 139), (65, 105, 225), (100, 170, 230), (45, 55, 110)),
    "brown": ((139, 69, 19), (101, 67, 33), (160, 110, 70)),
    "green": ((0, 128, 0), (0, 200, 0), (0, 80, 0), (120, 200, 100), (110, 140, 40),
              (85, 107, 47)),
    "grey": ((85, 85, 85), (128, 128, 128), (198, 198, 198)),
    "orange": ((255, 165, 0), (255, 120, 0), (240, 140, 60)),
    "pink": ((255, 192, 203), (255, 105, 180), (240, 150, 170)),
    "purple": ((128, 0, 128), (148, 0, 211), (180, 120, 210), (90, 60, 120)),
    "red": ((255, 0, 0), (190, 20, 30), (139, 0, 0)),
    "white": ((255, 255, 255),),
    "yellow": ((255, 255, 0), (255, 215, 0), (250, 240, 140)),
}
CHROMA_FLOOR = 6.0
CHROMA_RAMP = 6.0
ACHROMATIC_PENALTY = 1000.0
TEMPERATURE = 25.0

# sRGB (linear) -> XYZ under D65, and the D65 reference white.
_SRGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
                (0.2126729, 0.7151522, 0.0721750),
                (0.0193339, 0.1191920, 0.9503041))
_WHITE_D65 = (0.95047, 1.0, 1.08883)
_DELTA = 6.0 / 29.0


def srgb_to_lab(rgb: jax.Array) -> jax.Array:
  """CIELAB `[..., 3]` (L in [0, 100]) of sRGB colours `[..., 3]` in [0, 1] (clipped), D65.

  Differentiable everywhere: each branch of the piecewise curves sees only inputs it is
  defined on, so no NaN gradients leak from the branch that is not taken.
  """
  c = jnp.clip(jnp.asarray(rgb, jnp.float32), 0.0, 1.0)
  knee = 0.04045
  linear = jnp.where(c <= knee, c / 12.92, ((jnp.maximum(c, knee) + 0.055) / 1.055) ** 2.4)
  xyz = linear @ jnp.asarray(_SRGB_TO_XYZ, jnp.float32).T / jnp.asarray(_WHITE_D65, jnp.float32)
  cube = _DELTA ** 3
  f = jnp.where(xyz > cube, jnp.cbrt(jnp.maximum(xyz, cube)),
                xyz / (3 * _DELTA ** 2) + 4.0 / 29.0)
  fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
  return jnp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def _prototype_table() -> np.ndarray:
  """All prototypes as 8-bit sRGB `[11, M, 3]`, colour by colour; colours with fewer than M
  prototypes repeat their first (a repeat leaves the nearest-prototype distance unchanged)."""
  most = max(len(p) for p in PROTOTYPES.values())
  rows = [list(PROTOTYPES[n]) + [PROTOTYPES[n][0]] * (most - len(PROTOTYPES[n])) for n in COLOURS]
  return np.asarray(rows, np.float32)


_CHROMATIC = np.asarray([name not in ACHROMATIC for name in COLOURS], np.float32)


def colour_params(temperature: float = TEMPERATURE) -> dict[str, jax.Array]:
  """The segmenter's constants: Lab prototypes `[11, M, 3]`, temperature, achromatic rule."""
  if not temperature > 0:
    raise ValueError(f"temperature is {temperature}, expected a positive number")
  return {"prototypes": srgb_to_lab(jnp.asarray(_prototype_table()) / 255.0),
          "temperature": jnp.asarray(temperature, jnp.float32),
          "chroma_floor": jnp.asarray(CHROMA_FLOOR, jnp.float32),
          "chroma_ramp": jnp.asarray(CHROMA_RAMP, jnp.float32),
          "achromatic_penalty": jnp.asarray(ACHROMATIC_PENALTY, jnp.float32)}


def pool(images: jax.Array, downsample: int) -> jax.Array:
  """Average-pools `[B, H, W, C]` by `downsample` in both directions (H, W divisible by it)."""
  if downsample == 1:
    return images
  b, h, w, c = images.shape
  if h % downsample or w % downsample:
    raise ValueError(f"images of size {h}x{w} cannot be downsampled by {downsample}; use a "
                     f"factor that divides both sides")
  x = images.reshape(b, h // downsample, downsample, w // downsample, downsample, c)
  return jnp.mean(x, axis=(2, 4))


def colour_distances(params: Mapping[str, jax.Array], images: jax.Array) -> jax.Array:
  """Distance of each pixel to each colour `[B, H, W, 11]` (`COLOURS` order), images in [-1, 1].

  Squared Lab distance to the colour's nearest prototype, plus the achromatic rule's penalty
  on the chromatic colours.
  """
  lab = srgb_to_lab((images + 1.0) / 2.0)
  d = jnp.sum(jnp.square(lab[..., None, None, :] - params["prototypes"]), axis=-1)
  d = jnp.min(d, axis=-1)
  chroma = jnp.sqrt(jnp.sum(jnp.square(lab[..., 1:]), axis=-1, keepdims=True) + 1e-12)
  ramp = (params["chroma_floor"] + params["chroma_ramp"] - chroma) / params["chroma_ramp"]
  neutral = jnp.clip(ramp, 0.0, 1.0)  # 1 up to the floor, 0 from floor + ramp on
  return d + params["achromatic_penalty"] * neutral * _CHROMATIC


def make_segmenter(downsample: int = 1, temperature: float = TEMPERATURE) -> Segmenter:
  """The colour segmenter; labels and probabilities are at 1/`downsample` of the image size.

  `segment_fn(params, images) -> [B, H/d, W/d, 12]` float32 probabilities (column 0 is '-',
  always 0); `label_fn(params, images) -> [B, H/d, W/d, 1]` int32 colour indices 1..11.
  """
  if not isinstance(downsample, (int, np.integer)) or downsample < 1:
    raise ValueError(f"downsample is {downsample!r}, expected a positive integer")
  downsample = int(downsample)

  @jax.jit
  def segment_fn(params: Any, images: jax.Array) -> jax.Array:
    d = colour_distances(params, pool(images, downsample))
    probs = jax.nn.softmax(-d / params["temperature"], axis=-1)
    return jnp.concatenate([jnp.zeros_like(probs[..., :1]), probs], axis=-1)

  @jax.jit
  def label_fn(params: Any, images: jax.Array) -> jax.Array:
    d = colour_distances(params, pool(images, downsample))
    return (jnp.argmin(d, axis=-1)[..., None] + 1).astype(jnp.int32)

  return Segmenter(segment_fn, label_fn, colour_params(temperature), CONCEPTS)
