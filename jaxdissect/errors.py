"""Error helpers: every complaint names the bad value and what would have been valid."""

from __future__ import annotations

from typing import Iterable, Sequence


def check_choice(kind: str, value: object, valid: Iterable[object]) -> None:
  """Raises ValueError naming `value` and listing `valid` when `value` is not among them."""
  valid = list(valid)
  if value not in valid:
    raise ValueError(f"unknown {kind} {value!r}; valid {kind}s are: {', '.join(map(repr, valid))}")


def check_shape(name: str, shape: Sequence[int], expected: Sequence[int | None]) -> None:
  """Raises ValueError unless `shape` matches `expected` (None matches any size)."""
  ok = len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))
  if not ok:
    want = "[" + ", ".join("?" if e is None else str(e) for e in expected) + "]"
    raise ValueError(f"{name} has shape {list(shape)}, expected {want}")
