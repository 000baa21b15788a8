"""How many images per model call fit a device: the batch split chosen from XLA's memory analysis.

A batch that is cheap on one model can exhaust a device on another (a ResNet-50 UPerNet on 100
images of 256x256 asks for 163 GiB), so a fixed images-per-call setting is either wasteful or
fails. XLA knows, once a program is compiled, how many bytes its arguments, outputs and
temporaries take; this module compiles a function at candidate chunk sizes (without running it)
and keeps the largest whose footprint fits a byte budget. A device without a memory limit (a
CPU) gets a fixed budget for a call's temporaries instead (`host_chunk`, `HOST_CALL_BYTES`); a
backend that reports no analysis (`memory_analysis()` is None) is not split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax

# Share of a device's allocator limit a program may plan for: the rest covers what the analysis
# does not see (fragmentation, buffers of other programs, the runtime's own).
SAFETY = 0.8

# Bytes of XLA temporaries one model call may plan for on a device without a memory limit (a
# CPU): convolution scratch outside the analysis comes on top, so the process grows 3-4x that
# (a ProgGAN-256 dissection at 100 images per call planned 1.7 GB and peaked at 7.6 GB RSS; its
# strips, regenerating top images 100 at a time, at 7.8 GB).
HOST_CALL_BYTES = 128 << 20


class Fit(NamedTuple):
  """A chosen chunk, its program's bytes (None: unknown), the budget, and every size tried."""

  chunk: int
  bytes: int | None
  budget: int
  tried: dict[int, int | None]


def divisors(n: int) -> list[int]:
  """The divisors of `n`, largest first: the chunk sizes that split `n` rows evenly."""
  return [d for d in range(n, 0, -1) if n % d == 0]


def device_budget(devices: Sequence[jax.Device], fraction: float = SAFETY) -> int | None:
  """`fraction` of the smallest allocator limit among `devices` (`memory_stats()["bytes_limit"]`),
  or None when a device reports none (CPU): there the batch is not split automatically."""
  limits = []
  for device in devices:
    stats = device.memory_stats()
    if not stats or "bytes_limit" not in stats:
      return None
    limits.append(int(stats["bytes_limit"]))
  return int(min(limits) * fraction) if limits else None


def _out_of_memory(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def footprint(fn: Callable, args: Sequence, donate_argnums: tuple[int, ...] = ()) -> int | None:
  """Bytes of `jit(fn)` on `args` (abstract or concrete) by XLA's memory analysis of the
  compiled program: arguments + outputs + temporaries, less buffers outputs reuse from donated
  arguments. None when the backend has no analysis; a compile that itself runs out of memory
  counts as too large (-1)."""
  try:
    compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*args).compile()
  except jax.errors.JaxRuntimeError as e:
    if _out_of_memory(e):
      return -1
    raise
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def largest_chunk(build: Callable[[int], Callable], args: Sequence, chunks: Sequence[int],
                  budget: int, donate_argnums: tuple[int, ...] = ()) -> Fit:
  """The largest of `chunks` whose program `build(chunk)` on `args` fits `budget` bytes.

  `chunks` are sizes largest first (e.g. `divisors` of a device's batch). The largest is tried
  first, as it usually fits; otherwise a binary search finds the boundary, taking memory to grow
  with the chunk (as it does where the models' temporaries dominate, the case that needs a
  split; where they do not, no chunk changes much). Without an analysis the largest is kept.
  Raises ValueError naming the budget when even the smallest does not fit.
  """
  chunks = list(chunks)
  if not chunks:
    raise ValueError("no chunk sizes to choose from")
  tried: dict[int, int | None] = {}

  def fits(i: int) -> bool:
    size = tried[chunks[i]] = footprint(build(chunks[i]), args, donate_argnums)
    return size is None or 0 <= size <= budget

  if fits(0):
    return Fit(chunks[0], tried[chunks[0]], budget, tried)
  lo, hi = 1, len(chunks)  # chunks[:lo] do not fit; chunks[hi:] fit (hi == len: none known)
  while lo < hi:
    mid = (lo + hi) // 2
    if fits(mid):
      hi = mid
    else:
      lo = mid + 1
  if hi == len(chunks):
    need = lambda b: "more than can compile" if b == -1 else f"{b:,} bytes"
    sizes = "; ".join(f"{c}: {need(b)}" for c, b in sorted(tried.items()))
    raise ValueError(f"memory budget {budget:,} bytes ({budget / 2**30:.2f} GiB) is too small: "
                     f"even {chunks[-1]} image(s) per call do not fit (images per call: program "
                     f"size {sizes}); give a larger budget or a smaller model")
  return Fit(chunks[hi], tried[chunks[hi]], budget, tried)


def host_chunk(fn: Callable, one: jax.ShapeDtypeStruct, share: int,
               budget: int | None = None) -> int:
  """Images per call of `fn` for a device without a memory limit (a CPU): the largest divisor
  of `share` whose call plans at most `budget` bytes of temporaries, from XLA's analysis of a
  one-image call (`one`; temporaries grow linearly with the images per call); 0 (the whole
  share) when it all fits or the backend reports no analysis. `budget` None: `HOST_CALL_BYTES`."""
  budget = HOST_CALL_BYTES if budget is None else budget
  stats = jax.jit(fn).lower(one).compile().memory_analysis()
  per_image = stats.temp_size_in_bytes if stats is not None else 0
  if per_image * share <= budget:
    return 0
  return next(d for d in divisors(share) if d * per_image <= budget or d == 1)
