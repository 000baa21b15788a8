"""Models by name: what experiment scripts' `--model` and `--segmenter` flags resolve to.

Every experiment defaults to the scene world, whose trained weights ship inside the package, so a
first run needs no files and no network. Names map to zero-argument loaders; loading is lazy, so
asking for the planted world never touches the scene-world checkpoints.
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


def latent_dim(name: str) -> int:
  """The latent size of the registered generator `name`."""
  check_choice("model", name, GENERATORS)
  if name == "sceneworld":
    from jaxdissect.sceneworld import gan
    return gan.ZDIM
  from jaxdissect import planted
  return planted.ZDIM


GENERATORS: dict[str, Callable[[], Generator]] = {
    "sceneworld": _sceneworld_generator,
    "planted": _planted_generator,
}
SEGMENTERS: dict[str, Callable[[], Segmenter]] = {
    "sceneworld": _sceneworld_segmenter,
    "planted": _planted_segmenter,
}


def load_generator(name: str = "sceneworld") -> Generator:
  """The generator registered as `name` (see `GENERATORS`)."""
  check_choice("model", name, GENERATORS)
  return GENERATORS[name]()


def load_segmenter(name: str = "sceneworld") -> Segmenter:
  """The segmenter registered as `name` (see `SEGMENTERS`)."""
  check_choice("segmenter", name, SEGMENTERS)
  return SEGMENTERS[name]()


def load_world(name: str = "sceneworld") -> World:
  """Generator, segmenter and latent size of a built-in world: 'sceneworld' or 'planted'."""
  check_choice("world", name, GENERATORS)
  return World(load_generator(name), load_segmenter(name), latent_dim(name))
