"""Where a generator's latents come from: a seeded sample, or latents someone else chose.

Results are tallied per image index, so a run must be able to draw latent i again (the report
regenerates each unit's top images by index). A seeded sample does that by the original's
prefix-stable draw (`zsample`); given latents (an array, or an `.npy` file another tool wrote)
do it by indexing, which lets two tools be compared on exactly the same images. Either way the
source describes itself (`record`) so results say which images they were counted over.

The array need not be in memory: anything with `len`, `shape` and numpy-style indexing by slices
and integer arrays will do (a folder of images read on demand, `jaxdissect.imagefolder`); if it
has a `record()` method, that describes it instead of a digest of every value.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from jaxdissect.npyfile import read_npy
from jaxdissect.zsample import standard_z, z_batches

class LatentsError(ValueError):
  """Latents that cannot be used: unreadable file, wrong shape, too few rows (one line)."""


class Latents(NamedTuple):
  """A source of latents: `array` rows when given, else the seeded sample `seed`.

  `origin` names where an array came from (a file path, or "array") for the record. `array` is
  a numpy array or a lazy one (see the module docstring).
  """

  seed: int = 1
  array: np.ndarray | Any | None = None
  origin: str = ""

  @property
  def seeded(self) -> bool:
    return self.array is None

  def check(self, n: int, latent_shape: Sequence[int]) -> None:
    """Raises LatentsError unless the source gives `n` latents of `latent_shape`."""
    if self.array is None:
      return
    shape = tuple(latent_shape)
    if tuple(self.array.shape[1:]) != shape and self.array.shape[1:] != (math.prod(shape),):
      raise LatentsError(f"latents from {self.origin} have shape {list(self.array.shape)}; the "
                         f"generator takes [N, {', '.join(map(str, shape))}]")
    if len(self.array) < n:
      raise LatentsError(f"latents from {self.origin} hold {len(self.array)} rows, fewer than "
                         f"the {n} images asked for; lower n or give more latents")

  def batches(self, n: int, batch_size: int, latent_shape: Sequence[int],
              start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """Yields `(first, z[first:first + batch_size])` for rows `start..n` (float32)."""
    shape = tuple(latent_shape)
    if self.array is None:
      for first, z in z_batches(n, self.seed, batch_size, math.prod(shape), start=start):
        yield first, z.reshape(len(z), *shape)
      return
    self.check(n, shape)
    if batch_size < 1:
      raise ValueError(f"batch_size is {batch_size}, expected a positive integer")
    for first in range(start, n, batch_size):
      rows = self.array[first:min(n, first + batch_size)]
      yield first, np.asarray(rows, np.float32).reshape(len(rows), *shape)

  def rows(self, indices: np.ndarray, latent_shape: Sequence[int]) -> np.ndarray:
    """The latents of image `indices` (`[len(indices), *latent_shape]` float32)."""
    shape = tuple(latent_shape)
    indices = np.asarray(indices, np.int64)
    if self.array is None:
      count = int(indices.max()) + 1 if indices.size else 0
      z = standard_z(count, self.seed, math.prod(shape))[indices]
    else:
      z = np.asarray(self.array[indices], np.float32)
    return z.reshape(len(indices), *shape)

  def record(self) -> dict[str, Any]:
    """What `dissect.json` says about the images: the seed, or the array's origin and digest."""
    if self.array is None:
      return {"source": "seed", "seed": int(self.seed)}
    if callable(getattr(self.array, "record", None)):  # a lazy array describes itself
      return {"source": "array", "origin": self.origin, **self.array.record()}
    digest = hashlib.sha256(np.ascontiguousarray(self.array, np.float32).tobytes()).hexdigest()
    return {"source": "array", "origin": self.origin, "count": int(len(self.array)),
            "shape": [int(s) for s in self.array.shape[1:]], "sha256": digest}


def pad_rows(z: np.ndarray, size: int) -> np.ndarray:
  """A short batch padded with zero rows to `size`: one compiled shape for every batch."""
  if len(z) == size:
    return z
  out = np.zeros((size, *z.shape[1:]), z.dtype)
  out[:len(z)] = z
  return out


def seeded(seed: int) -> Latents:
  """The original's prefix-stable standard-normal sample numbered `seed`."""
  return Latents(seed=int(seed))


def from_array(z: Any, origin: str = "array") -> Latents:
  """Given latents `[N, ...]` (any float array)."""
  z = np.asarray(z)
  if z.ndim < 2 or not np.issubdtype(z.dtype, np.floating):
    raise LatentsError(f"latents from {origin} are {z.dtype} of shape {list(z.shape)}; expected "
                       "a float array [N, ...] with one latent per row")
  if not np.all(np.isfinite(z)):
    raise LatentsError(f"latents from {origin} hold non-finite values")
  return Latents(array=z.astype(np.float32, copy=False), origin=origin)


def load_npy(path: str) -> Latents:
  """Latents from an `.npy` file (read without pickles, its header checked against its size)."""
  z = read_npy(path, LatentsError)
  return from_array(z, origin=os.path.abspath(path))
