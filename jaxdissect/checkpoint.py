"""The one place jaxdissect touches Orbax: saving and loading pytrees of arrays.

Model parameters and resumable running state are stored as plain nested dicts (or NamedTuples) of
arrays. Keeping Orbax behind two functions means a change of Orbax API is a change here only, and
every caller gets the same clear errors for missing or damaged checkpoints.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint is missing or unreadable; the message names the path and how to remake it."""


def save(path: str, tree: Any, *, overwrite: bool = True) -> None:
  """Saves `tree` (a pytree of arrays) to the directory `path` (absolute or relative)."""
  path = os.path.abspath(path)
  tree = _arrays(tree)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, tree, force=overwrite)
  checkpointer.wait_until_finished()


def load(path: str, like: Any = None, *, remake: str = "") -> Any:
  """Loads the pytree saved at `path`; `like` (a tree of arrays or ShapeDtypeStructs) fixes its
  structure and dtypes. `remake` is the command that regenerates the file, quoted in errors."""
  path = os.path.abspath(path)
  hint = f"; regenerate it with: {remake}" if remake else ""
  if not os.path.isdir(path):
    raise CheckpointError(f"no checkpoint at {path}{hint}")
  abstract = None if like is None else jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                                     _arrays(like))
  try:
    return ocp.StandardCheckpointer().restore(path, abstract)
  except Exception as e:  # Orbax raises many types for damaged files; report them uniformly.
    raise CheckpointError(f"checkpoint at {path} is unreadable ({type(e).__name__}: {e}){hint}") from e


def _arrays(tree: Any) -> Any:
  """Orbax stores arrays, not Python or numpy scalars: wrap those as 0-d arrays."""
  return jax.tree.map(lambda x: np.asarray(x) if isinstance(x, (np.generic, int, float)) else x,
                      tree)


def to_numpy(tree: Any) -> Any:
  """A host copy of `tree` with numpy leaves (for saving state that lives on devices)."""
  return jax.tree.map(np.asarray, tree)
