"""Factories for `package.module:factory` model specs in tests (`tests.factory_models:...`).

Small enough to build in milliseconds; importable from the repo root, as scripts run with
`python -m experiments.<script> --model tests.factory_models:make_generator`.
"""

from __future__ import annotations

import jax

from jaxdissect import colorseg
from jaxdissect.model import Generator, Segmenter
from ports import proggan


def make_generator(width: int = 8, seed: int = 0) -> Generator:
  """A random ProgGAN with `width` channels everywhere: latents `[width]`, images 8x8."""
  if not isinstance(width, int) or width < 1:
    raise ValueError(f"width is {width!r}, expected a positive int")
  return proggan.make_generator([width, width, width], jax.random.key(seed))


def make_segmenter(downsample: int = 1) -> Segmenter:
  """The weightless colour segmenter."""
  return colorseg.make_segmenter(downsample)


def not_a_model() -> dict[str, int]:
  """Not a model: for the wrong-return-type error."""
  return {"width": 8}


NOT_CALLABLE = 3
