"""The checkpointed running state of the scene world's training scripts, written once.

Orbax restores into a template tree; an optax state is a tree of named tuples that a checkpoint
cannot name, so it is stored as its list of leaves and rebuilt on the running optimizer's
structure.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def state_tree(params: Any, opt_state: Any, step: int) -> dict[str, Any]:
  """The tree a checkpoint holds: parameters, the optimizer state's leaves and the step."""
  leaves = jax.tree.leaves(opt_state)
  return {"params": params, "opt_state": {f"{i:03d}": x for i, x in enumerate(leaves)},
          "step": np.int32(step)}


def restored(state: dict[str, Any], opt_state: Any) -> tuple[Any, Any, int]:
  """`(params, opt_state, step)` of a restored `state_tree`, the optimizer state rebuilt on the
  structure of `opt_state`."""
  treedef = jax.tree.structure(opt_state)
  leaves = [state["opt_state"][k] for k in sorted(state["opt_state"])]
  return state["params"], jax.tree.unflatten(treedef, leaves), int(state["step"])
