"""Deterministic, prefix-stable latent samples, identical to the original's `standard_z_sample`.

Dissection results are tallied per image index, so the i-th z must be the same whatever the sample
size or batch size of a run: then runs with different `--n` agree on the images they share, and
numbers can be compared with the original PyTorch code, which draws z from numpy's legacy
`RandomState(seed).standard_normal`. That generator is sequential, so drawing in chunks gives
the same rows as drawing all at once, and `z_batches` never holds more than one batch.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


def standard_z(n: int, seed: int, dim: int = 512) -> np.ndarray:
  """The first `n` latents `[n, dim]` float32 of the sample numbered `seed`."""
  _check_counts(n=n, dim=dim)
  return np.random.RandomState(seed).standard_normal(n * dim).reshape(n, dim).astype(np.float32)


def z_batches(n: int, seed: int, batch_size: int, dim: int = 512,
              start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
  """Yields `(first, z[first:first + batch_size])` over `standard_z(n, seed, dim)`, lazily,
  beginning at row `start` (the rows before it are drawn and dropped, a chunk at a time)."""
  _check_counts(n=n, dim=dim)
  if batch_size < 1:
    raise ValueError(f"batch_size is {batch_size}, expected a positive integer")
  if not 0 <= start <= n:
    raise ValueError(f"start is {start}, expected 0 <= start <= n = {n}")
  rng = np.random.RandomState(seed)
  for skip in range(0, start, 4096):
    rng.standard_normal(min(4096, start - skip) * dim)
  for start in range(start, n, batch_size):
    rows = min(batch_size, n - start)
    yield start, rng.standard_normal(rows * dim).reshape(rows, dim).astype(np.float32)


def _check_counts(n: int, dim: int) -> None:
  """Raises ValueError for a negative sample count or a non-positive dimension."""
  if n < 0:
    raise ValueError(f"n is {n}, expected a non-negative number of samples")
  if dim < 1:
    raise ValueError(f"dim is {dim}, expected a positive latent dimension")
