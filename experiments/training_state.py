"""What the scene world's training scripts share: their checkpointed running state and a quiet
log while they save it.

Orbax restores into a template tree; an optax state is a tree of named tuples that a checkpoint
cannot name, so it is stored as its list of leaves and rebuilt on the running optimizer's
structure.
"""

from __future__ import annotations

import logging as std_logging
from typing import Any

from absl import logging
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


def quiet_orbax() -> None:
  """Drops Orbax's INFO chatter (several lines per save) from the absl log."""
  logging.get_absl_logger().addFilter(
      lambda r: r.levelno >= std_logging.WARNING or "/orbax/" not in r.pathname)
