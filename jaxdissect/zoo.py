"""Models by name: what experiment scripts' `--model` and `--segmenter` flags resolve to.

Every experiment defaults to the scene world, whose trained weights ship inside the package, so a
first run needs no files and no network. Names map to zero-argument loaders; loading is lazy, so
asking for the planted world never touches the scene-world checkpoints.

Beyond the built-in worlds: `facegan` is a real pretrained 64x64 face DCGAN (its weights come with
`pip install --no-deps gan-face-generate`; see `ports.facegan`) and `color` a weightless colour
segmenter for any generator's images (`jaxdissect.colorseg`), the face GAN's default segmenter.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from jaxdissect.errors import check_choice
from jaxdissect.model import Generator, Segmenter


class World(NamedTuple):
  """A generator, a segmenter for its images and the latent size its z samples need."""

  generator: Generator
  segmenter: Segmenter
  zdim: int


def _sceneworld_generator() -> Generator:
  from jaxdissect.sceneworld import gan
  return gan.load_generator()


def _sceneworld_segmenter() -> Segmenter:
  from jaxdissect.sceneworld import segmenter
  return segmenter.load_segmenter()


def _planted_generator() -> Generator:
  from jaxdissect import planted
  return planted.make_planted_generator()


def _planted_segmenter() -> Segmenter:
  from jaxdissect import planted
  return planted.make_oracle_segmenter()


def _facegan_generator() -> Generator:
  from ports import facegan
  return facegan.load()


def _color_segmenter() -> Segmenter:
  from jaxdissect import colorseg
  return colorseg.make_segmenter()


def _sceneworld_zdim() -> int:
  from jaxdissect.sceneworld import gan
  return gan.ZDIM


def _planted_zdim() -> int:
  from jaxdissect import planted
  return planted.ZDIM


def _facegan_zdim() -> int:
  from ports import facegan
  return facegan.ZDIM


GENERATORS: dict[str, Callable[[], Generator]] = {
    "sceneworld": _sceneworld_generator,
    "planted": _planted_generator,
    "facegan": _facegan_generator,
}
SEGMENTERS: dict[str, Callable[[], Segmenter]] = {
    "sceneworld": _sceneworld_segmenter,
    "planted": _planted_segmenter,
    "color": _color_segmenter,
}
# Latent size of each generator, read without loading its weights.
LATENT_DIMS: dict[str, Callable[[], int]] = {
    "sceneworld": _sceneworld_zdim,
    "planted": _planted_zdim,
    "facegan": _facegan_zdim,
}
# The segmenter a generator is dissected with by default (its own world's, unless listed here).
DEFAULT_SEGMENTERS: dict[str, str] = {"facegan": "color"}


def latent_dim(name: str) -> int:
  """The latent size of the registered generator `name`."""
  check_choice("model", name, GENERATORS)
  return LATENT_DIMS[name]()


def default_segmenter(model: str) -> str:
  """The name of the segmenter that `model`'s images are labelled with by default."""
  check_choice("model", model, GENERATORS)
  return DEFAULT_SEGMENTERS.get(model, model)


def load_generator(name: str = "sceneworld") -> Generator:
  """The generator registered as `name` (see `GENERATORS`)."""
  check_choice("model", name, GENERATORS)
  return GENERATORS[name]()


def load_segmenter(name: str = "sceneworld") -> Segmenter:
  """The segmenter registered as `name` (see `SEGMENTERS`)."""
  check_choice("segmenter", name, SEGMENTERS)
  return SEGMENTERS[name]()


def load_world(name: str = "sceneworld") -> World:
  """Generator, default segmenter and latent size of a registered generator, e.g. 'sceneworld',
  'planted' or 'facegan' (with the 'color' segmenter)."""
  check_choice("world", name, GENERATORS)
  return World(load_generator(name), load_segmenter(default_segmenter(name)), latent_dim(name))
