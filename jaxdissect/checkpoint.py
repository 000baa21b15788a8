"""The one place jaxdissect touches Orbax: saving and loading pytrees of arrays.

Model parameters and resumable running state are stored as plain nested dicts (or NamedTuples) of
arrays. Keeping Orbax behind two functions means a change of Orbax API is a change here only, and
every caller gets the same clear errors for missing or damaged checkpoints.

Checkpoint folders may be damaged (a disk filled up, a copy cut short), so reading one fails
only with `CheckpointError`. Given `like`, a restore allocates exactly the arrays `like` names,
whatever the files declare; `latest.json` is size-bounded and its fields are type-checked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxdissect import smallfile


class CheckpointError(RuntimeError):
  """A checkpoint is missing or unreadable; the message names the path and how to remake it."""


def save(path: str, tree: Any, *, overwrite: bool = True) -> None:
  """Saves `tree` (a pytree of arrays) to the directory `path` (absolute or relative)."""
  path = os.path.abspath(path)
  tree = _arrays(tree)
  checkpointer = _checkpointer()
  checkpointer.save(path, tree, force=overwrite)
  checkpointer.wait_until_finished()


def load(path: str, like: Any = None, *, remake: str = "") -> Any:
  """Loads the pytree saved at `path`; `like` (a tree of arrays or ShapeDtypeStructs) fixes its
  structure and dtypes. `remake` is the command that regenerates the file, quoted in errors."""
  path = os.path.abspath(path)
  hint = f"; regenerate it with: {remake}" if remake else ""
  if not os.path.isdir(path):
    raise CheckpointError(f"no checkpoint at {path}{hint}")
  try:
    checkpointer = _checkpointer()
    if like is None:
      like = checkpointer.metadata(path).item_metadata.tree
    return checkpointer.restore(path, _on_this_host(like))
  except Exception as e:  # Orbax raises many types for damaged files; report them uniformly.
    message = " ".join(str(e).split())[:300]
    raise CheckpointError(f"checkpoint at {path} is unreadable ({type(e).__name__}: {message})"
                          f"{hint}") from e


def _checkpointer() -> ocp.StandardCheckpointer:
  """An Orbax checkpointer of this process alone: in a multi-process run one process (the
  primary) writes, and Orbax's default would wait for the others to join the save."""
  me = jax.process_index()
  options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
  return ocp.StandardCheckpointer(multiprocessing_options=options)


def _on_this_host(like: Any) -> Any:
  """Abstract arrays placed on this process's first device.

  Naming the target placement lets a checkpoint written on one platform (say a CPU laptop) load
  on another (a GPU or TPU host): Orbax otherwise tries to restore the saved device topology.
  """
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=device),
                      _arrays(like))


def _arrays(tree: Any) -> Any:
  """Orbax stores arrays, not Python or numpy scalars: wrap those as 0-d arrays."""
  return jax.tree.map(lambda x: np.asarray(x) if isinstance(x, (np.generic, int, float)) else x,
                      tree)


def to_numpy(tree: Any) -> Any:
  """A host copy of `tree` with numpy leaves (for saving state that lives on devices)."""
  return jax.tree.map(np.asarray, tree)


_LATEST = "latest.json"
_MAX_LATEST_BYTES = 16 << 20  # the pointer and its meta (run settings) are a few kB
_STATE_NAME = re.compile(r"state-[0-9]{1,18}\Z")


def save_latest(root: str, tree: Any, meta: dict) -> str:
  """Saves `tree` as the newest of a series under `root`, crash-safely.

  The tree goes to a fresh folder `root/state-<i>`; only once it is complete does `latest.json`
  (with `meta`) switch to it, by an atomic rename; then older folders are removed. A process
  killed at any moment leaves `latest.json` naming a complete checkpoint (or no file at all).
  """
  root = os.path.abspath(root)
  os.makedirs(root, exist_ok=True)
  previous = _read_latest(root)
  number = previous["number"] + 1 if previous else 0
  name = f"state-{number}"
  save(os.path.join(root, name), tree)
  pointer = os.path.join(root, _LATEST)
  with open(pointer + ".tmp", "w") as f:
    json.dump({"number": number, "name": name, "meta": meta}, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(pointer + ".tmp", pointer)
  for entry in os.listdir(root):
    if entry.startswith("state-") and entry != name:
      shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
  return os.path.join(root, name)


def load_latest(root: str, like: Any) -> tuple[Any, dict] | None:
  """The newest tree saved by `save_latest` under `root` and its meta, or None if there is none."""
  root = os.path.abspath(root)
  latest = _read_latest(root)
  if latest is None:
    return None
  return load(os.path.join(root, latest["name"]), like), latest["meta"]


def latest_meta(root: str) -> dict | None:
  """The meta of the newest checkpoint under `root` without loading it, or None."""
  latest = _read_latest(os.path.abspath(root))
  return None if latest is None else latest["meta"]


def _read_latest(root: str) -> dict | None:
  """The validated `latest.json` of `root` (number, plain folder name, meta dict), or None."""
  path = os.path.join(root, _LATEST)
  try:
    latest = smallfile.read_json(path, _MAX_LATEST_BYTES, _LATEST)
    if not isinstance(latest, dict):
      raise ValueError(f"it holds a JSON {type(latest).__name__}, not an object")
    number, name, meta = latest.get("number"), latest.get("name"), latest.get("meta")
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
      raise ValueError(f"'number' is {str(number)[:40]}, not a count")
    if not isinstance(name, str) or not _STATE_NAME.match(name):
      raise ValueError(f"'name' is {str(name)[:40]!r}, not a state-<i> folder name")
    if not isinstance(meta, dict):
      raise ValueError(f"'meta' is a {type(meta).__name__}, not an object")
    return latest
  except FileNotFoundError:
    return None
  except (OSError, ValueError, RecursionError) as e:
    message = " ".join(str(e).split())[:300]
    raise CheckpointError(f"{path} is unreadable ({message}); delete {root} to start over"
                          ) from e
