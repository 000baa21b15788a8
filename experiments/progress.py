"""A dependency-free progress bar for long loops in experiment scripts (stderr, with rates)."""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int, desc: str = "", unit: str = "it",
             scale: int = 1, quiet: bool = False, every: float = 0.5) -> Iterator[T]:
  """Yields `items`, drawing `desc |####    | done/total unit, rate unit/s, eta` on stderr.

  Each item counts as `scale` units (e.g. `scale=batch_size` with `unit="img"`). Redraws at most
  every `every` seconds; `quiet` turns it off. Writes a final line with the total time.
  """
  start = last = time.perf_counter()
  done = 0
  for item in items:
    yield item
    done += scale
    now = time.perf_counter()
    if not quiet and (now - last >= every or done >= total):
      last = now
      _draw(desc, min(done, total), total, unit, now - start, final=done >= total)
  if not quiet and done < total:
    _draw(desc, done, total, unit, time.perf_counter() - start, final=True)


def _draw(desc: str, done: int, total: int, unit: str, elapsed: float, final: bool,
          rate: float | None = None) -> None:
  width = 30
  filled = int(width * done / max(total, 1))
  if rate is None:
    rate = done / elapsed if elapsed > 0 else 0.0
  eta = (total - done) / rate if rate > 0 else 0.0
  tail = f"{elapsed:.0f}s" if final else f"eta {eta:.0f}s"
  sys.stderr.write(f"\r{desc} |{'#' * filled}{' ' * (width - filled)}| {done}/{total} {unit}, "
                   f"{rate:.1f} {unit}/s, {tail}" + ("\n" if final else ""))
  sys.stderr.flush()


def progress_hook(quiet: bool = False, label: str | None = None, unit: str = "img",
                  every: float = 0.5) -> Callable[[str, int, int], None]:
  """A library progress hook (`hook(stage, done, total)`, see `jaxdissect.driver`) that draws
  one bar per stage on stderr, timed from the stage's first report; `label` replaces the
  library's stage name."""
  starts: dict[str, tuple[float, int]] = {}
  drawn: dict[str, float] = {}

  def hook(stage: str, done: int, total: int) -> None:
    if quiet:
      return
    stage = label or stage
    now = time.perf_counter()
    start, first = starts.setdefault(stage, (now, done))
    final = done >= total
    if final or now - drawn.get(stage, 0.0) >= every:
      drawn[stage] = now
      rate = (done - first) / (now - start) if now > start else 0.0
      _draw(stage, min(done, total), total, unit, now - start, final=final, rate=rate)

  return hook
