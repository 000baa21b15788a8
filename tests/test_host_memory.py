"""The scripts' malloc tuning: applied on glibc, and the user's own environment settings win."""

import os
import subprocess
import sys

import pytest

_PROBE = "from experiments import host_memory; print(sorted(host_memory.tune_malloc().items()))"


def _tuned(**env) -> str:
  full = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
  full.update(env)
  out = subprocess.run([sys.executable, "-c", _PROBE], env=full, capture_output=True, text=True,
                       check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_tunes_arenas_and_trim_unless_the_environment_chose():
  assert _tuned() == "[('MALLOC_ARENA_MAX', 2), ('MALLOC_TRIM_THRESHOLD_', 0)]"
  assert _tuned(MALLOC_ARENA_MAX="8") == "[('MALLOC_TRIM_THRESHOLD_', 0)]"
  assert _tuned(MALLOC_ARENA_MAX="8", MALLOC_TRIM_THRESHOLD_="1000") == "[]"
