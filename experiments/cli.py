"""What every experiment script does the same way: one-line errors, atomic JSON, progress ticks.

Scripts report bad flags as one line naming the value and the valid choices (exit status 2),
write result files so that a killed run never leaves half a JSON behind, and show progress for
loops that report how many images they finished.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any, Callable

from absl import logging

from experiments import host_memory
from jaxdissect import sharding
from jaxdissect.report import output


class UsageError(ValueError):
  """A bad flag value (reported as one line, exit status 2)."""


def run_main(name: str, run: Callable[[], Any], argv: list[str],
             failures: tuple[type[BaseException], ...] = ()) -> None:
  """Runs a script's body: UsageError exits 2, `failures` exit 1, each as one stderr line."""
  # Orbax narrates every checkpoint at INFO; keep the log to what the script does.
  logging.get_absl_handler().addFilter(lambda record: "orbax" not in record.pathname)
  tuned = host_memory.tune_malloc()
  if tuned:
    logging.debug("malloc settings: %s", tuned)
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
  """Writes `obj` to `path` atomically (`jaxdissect.report.output.write_json`)."""
  output.write_json(path, obj)


def threshold(text: str) -> float | str:
  """A `--threshold` value parsed: a number, or 'iqr' (`thresholds.rule_for` checks its range)."""
  if text.strip().lower() == "iqr":
    return "iqr"
  try:
    return float(text)
  except ValueError:
    raise UsageError(f"--threshold={text!r} is neither a number in (0, 1) nor 'iqr'") from None


def writable_dir(flag: str, path: str | None) -> str:
  """`path` made absolute and created, after checking it can be written (on process 0 only;
  other processes of a multi-process run write nothing)."""
  if not path or not path.strip():
    raise UsageError(f"--{flag} is empty; give a folder to write to")
  path = os.path.abspath(path)
  if not sharding.is_primary():
    return path
  if os.path.exists(path) and not os.path.isdir(path):
    raise UsageError(f"--{flag}={path} exists and is not a folder")
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path):
      pass
  except OSError as e:
    raise UsageError(f"--{flag}={path} is not writable ({e.strerror})") from None
  return path


def checked(fn: Callable[..., Any], *args, errors: tuple[type[Exception], ...] = (ValueError,),
            **kwargs) -> Any:
  """`fn(*args, **kwargs)`, its `errors` (bad user input found by the library) as UsageError."""
  try:
    return fn(*args, **kwargs)
  except errors as e:
    raise UsageError(str(e)) from None


def log_summary(doc: dict) -> None:
  """One log line per layer of a `dissect.json` document: interpretable units by concept."""
  for record in doc["layers"]:
    counts = ", ".join(f"{c} {k}" for c, k in record["concept_counts"].items())
    logging.info("%s: %d/%d units interpretable (%s)", record["layer"], record["interpretable"],
                 len(record["units"]), counts or "none")
