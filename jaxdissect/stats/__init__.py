"""Streaming statistics as optax-style `Stat(init, update, merge, result)` bundles."""

from jaxdissect.stats.base import Stat, merge_all, merge_over_axis

__all__ = ["Stat", "merge_all", "merge_over_axis"]
