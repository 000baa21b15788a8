"""Timing and measuring helpers shared by the benchmarks, so that every benchmark times alike.

Wall times of jitted calls (blocking until their results are ready), medians, XLA's FLOP count
of a compiled function, the GFLOP/s of a large matmul (the practical compute limit to compare
achieved GFLOP/s against) and the peak RSS of a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

# The repository root: where `python -m experiments.*` subprocesses run.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def once(fn, *args) -> float:
  """Wall seconds of one call of `fn(*args)`."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def timed(fn, *args, repeats: int) -> float:
  """Median wall seconds of `fn(*args)` after one warm-up call (which also compiles)."""
  jax.block_until_ready(fn(*args))
  return median([once(fn, *args) for _ in range(repeats)])


def median(values) -> float:
  return float(np.median(values))


def matmul_gflop_per_s(repeats: int, size: int = 2048) -> float:
  """GFLOP/s of a large float32 matmul: the practical compute limit of this machine."""
  a = jax.random.normal(jax.random.key(2), (size, size))
  return 2 * size**3 / timed(jax.jit(lambda a: a @ a), a, repeats=repeats) / 1e9


def compiled_flops(fn, *args) -> float:
  """FLOPs of one call of `fn(*args)` by XLA's cost analysis of the compiled program."""
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax returns one dict per program
    analysis = analysis[0]
  return float(analysis["flops"])


# Runs argv[1:] with stdout discarded and prints its peak RSS in KiB; exits with its status.
_RSS_LAUNCHER = ("import os, subprocess, sys; "
                 "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
                 "_, status, usage = os.wait4(p.pid, 0); print(usage.ru_maxrss); "
                 "sys.exit(os.waitstatus_to_exitcode(status))")


def peak_rss(cmd: list[str], cwd: str, env: dict | None = None) -> tuple[int, float]:
  """Peak resident set size in bytes and wall seconds of a process running `cmd`.

  Linux carries a process's RSS high-water mark across exec, so a child started straight from
  this (large) process would report at least this process's RSS. A small launcher process starts
  the child and reads its own peak with `os.wait4` (RUSAGE_CHILDREN would give the largest of
  all children waited for so far).
  """
  with tempfile.TemporaryFile() as err:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RSS_LAUNCHER, *cmd], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=err, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode:
      err.seek(0)
      tail = err.read().decode(errors="replace")[-2000:]
      raise RuntimeError(f"{' '.join(cmd)} exited with status {proc.returncode}:\n{tail}")
  return int(proc.stdout.split()[-1]) * 1024, seconds  # ru_maxrss is in KiB on Linux
