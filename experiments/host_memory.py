"""Keeps a script's resident memory close to what it holds: glibc malloc settings for XLA's threads.

XLA's CPU client computes on a pool of threads. glibc gives each thread that allocates a heap of
its own ("arena", up to eight per core) and keeps memory freed at the top of a heap for reuse
instead of returning it. Between compiles, batches and the strips' generator calls that is
hundreds of MB of resident memory holding nothing: the README's job peaked at 1,249 MiB with
glibc's defaults and 928 MiB with two arenas and freed memory returned at once (BENCHMARKS.md,
issue 15). Scripts call `tune_malloc` first; the library sets nothing process-wide. A user's own
`MALLOC_ARENA_MAX` / `MALLOC_TRIM_THRESHOLD_` environment settings win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_ARENA_MAX = -8
ARENAS = 2
TRIM_THRESHOLD = 0


def tune_malloc() -> dict[str, int]:
  """Limits glibc's arenas and trims freed memory at once; returns what was set ({} if nothing:
  not glibc, or the user's environment already chose)."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return {}  # not glibc (macOS, musl): nothing to tune
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  wanted = {"MALLOC_ARENA_MAX": (_M_ARENA_MAX, ARENAS),
            "MALLOC_TRIM_THRESHOLD_": (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)}
  done = {}
  for env, (param, value) in wanted.items():
    if env not in os.environ and mallopt(param, value) == 1:
      done[env] = value
  return done
