"""What the CLI tests share: an environment in which a subprocess finds the repository, and a
program that parses one script's flags many times in one interpreter (one jax start-up), printing
OK or the usage error for each set."""

import os
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def subprocess_env(cache_dir: pathlib.Path) -> dict:
  """`os.environ` with the repository on PYTHONPATH and jax's compilation cache in `cache_dir`."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
  return env


def usage_batch(module: str, run: str) -> str:
  """Python source: for each JSON list of flags in argv, `experiments.<module>.<run>()`."""
  return f"""
import json
import sys
from absl import flags
from experiments import {module}
from experiments.cli import UsageError
for args in map(json.loads, sys.argv[1:]):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["{module}", "--quiet", *args])
  try:
    {module}.{run}()
    print("OK")
  except UsageError as e:
    print("USAGE", e)
"""
