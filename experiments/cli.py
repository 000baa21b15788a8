"""What every experiment script does the same way: one-line errors, atomic JSON, progress ticks.

Scripts report bad flags as one line naming the value and the valid choices (exit status 2),
write result files so that a killed run never leaves half a JSON behind, and show progress for
loops that report how many images they finished.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable

from absl import logging

from experiments.progress import progress


class UsageError(ValueError):
  """A bad flag value (reported as one line, exit status 2)."""


def run_main(name: str, run: Callable[[], Any], argv: list[str],
             failures: tuple[type[BaseException], ...] = ()) -> None:
  """Runs a script's body: UsageError exits 2, `failures` exit 1, each as one stderr line."""
  # Orbax narrates every checkpoint at INFO; keep the log to what the script does.
  logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
  if len(argv) > 1:
    sys.exit(f"{name}: unexpected arguments {argv[1:]}; all options are --flags")
  try:
    run()
  except UsageError as e:
    sys.stderr.write(f"{name}: error: {e}\n")
    sys.exit(2)
  except failures as e:
    sys.stderr.write(f"{name}: error: {e}\n")
    sys.exit(1)


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` to `path` through a temporary file and an atomic rename."""
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(path + ".tmp", path)


def ticker(total: int, desc: str, quiet: bool, unit: str = "img") -> Callable[[int], None]:
  """A progress bar driven by `tick(count)` calls (for library loops with an `on_batch` hook)."""
  bar = iter(progress(range(total), total, desc=desc, unit=unit, quiet=quiet))

  def tick(count: int) -> None:
    for _ in range(count):
      next(bar, None)

  return tick
