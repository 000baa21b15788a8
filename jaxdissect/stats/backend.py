"""Numpy kernels on the CPU backend, jax code elsewhere, chosen when a function is lowered.

Some tallies are faster as numpy code run on XLA's own CPU buffers (`buffer_callback`, operands
aliased to results, no copies) than as XLA CPU loops: sorts, and scatters that drop most of
their updates. On other backends the jax version runs. Both must write identical states.
"""

from __future__ import annotations

import os
import threading
from typing import Callable

import jax
import numpy as np

# An experimental jax API: without it the CPU runs the jax kernels too (slower, same state).
try:
  from jax.experimental.buffer_callback import buffer_callback  # pylint: disable=g-import-not-at-top
except ImportError:  # pragma: no cover - depends on the installed jax
  buffer_callback = None


def numpy_on_cpu(host: Callable, device: Callable, *args):
  """`host(*args)` when lowering for the CPU backend, `device(*args)` for any other."""
  if buffer_callback is None:
    return device(*args)
  return jax.lax.platform_dependent(*args, cpu=_varying_like(host, args), default=device)


def _varying_like(host: Callable, args) -> Callable:
  """`host` with its results marked as varying over the mesh axes its operands vary over
  (inside `shard_map` a callback's results are not, and both branches must agree)."""
  axes = set()
  for leaf in jax.tree.leaves(args):
    axes |= _varying(leaf)
  if not axes:
    return host

  def marked(*operands):
    return jax.tree.map(lambda x: _pcast(x, axes), host(*operands))

  return marked


def _varying(x) -> set:
  """The mesh axes `x` varies over (none outside `shard_map`; jax versions name it apart)."""
  kind = jax.typeof(x)
  manual = getattr(kind, "manual_axis_type", None)
  return set(getattr(manual, "varying", None) or getattr(kind, "vma", None) or ())


def _pcast(x, axes):
  missing = tuple(sorted(axes - _varying(x)))
  return jax.lax.pcast(x, missing, to="varying") if missing else x


def over_units(count: Callable[[slice], None], num_units: int, parallel: bool = True,
               align: int = 1) -> None:
  """Runs `count(units)` on slices of `num_units` units, one per core in threads (numpy
  releases the GIL in its loops), when `parallel`; slice starts are multiples of `align`.
  Threads live only for the call (starting one costs microseconds against milliseconds of
  counting), so nothing is held between calls. Slices are disjoint, so kernels that write only
  their units' cells need no lock. An exception in any slice is raised here."""
  cores = min(os.cpu_count() or 1, 8) if parallel else 1
  step = max(1, -(-num_units // cores // align) * align)
  slices = [slice(lo, min(lo + step, num_units)) for lo in range(0, max(num_units, 1), step)]
  errors = []

  def run(units: slice) -> None:
    try:
      count(units)
    except BaseException as e:  # pylint: disable=broad-exception-caught
      errors.append(e)

  threads = [threading.Thread(target=run, args=(u,), name="count") for u in slices[1:]]
  for thread in threads:
    thread.start()
  run(slices[0])
  for thread in threads:
    thread.join()
  if errors:
    raise errors[0]


def worth_threads(num_values: int) -> bool:
  """Whether counting `num_values` values repays starting threads (about 2**18 values each)."""
  return num_values >= 1 << 19


def add_row_pixels(pixels: np.ndarray, rows: np.ndarray) -> None:
  """Adds to `pixels [K]`, in place, the pixels of each label row in `rows [P, D]` (K: none;
  row 0: every pixel): the host twin of `conditional.add_row_pixels`."""
  counts = np.bincount(rows.reshape(-1), minlength=pixels.shape[0] + 1)
  pixels += counts[:pixels.shape[0]].astype(np.int32)
  pixels[0] += rows.shape[0]
