"""One data-parallel mesh for dissection: batches split over devices and hosts, tallies merged.

Dissection is embarrassingly parallel over images: every device can generate, segment and tally
its own slice of a batch, and the tallies are fixed-size integer counts (and top-k buffers) that
merge exactly. This module holds the few mesh mechanics that makes that possible on one device,
many local devices, or many processes (hosts): a 1-D mesh with a `data` axis, placing host
batches and per-device states on it, merging per-device states with collectives, and reading
merged values back on every process. Nothing here knows about dissection itself.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"  # the mesh axis batches are split over


def data_mesh(devices: int | None = None) -> Mesh:
  """A 1-D mesh over the first `devices` local devices of every process (all by default).

  Devices are ordered by process, then local order, so process p owns a contiguous block of
  every batch. Raises ValueError when `devices` is not in 1..local device count.
  """
  local = jax.local_device_count()
  if devices is None:
    devices = local
  if not 1 <= devices <= local:
    raise ValueError(f"devices is {devices}; this process has {local} local device(s), so give "
                     f"a number from 1 to {local}")
  chosen = []
  for process in range(jax.process_count()):
    own = sorted((d for d in jax.devices() if d.process_index == process), key=lambda d: d.id)
    chosen.extend(own[:devices])
  return Mesh(np.array(chosen), (DATA,))


def devices_for_batch(batch_size: int) -> int:
  """The most local devices per process (up to all) over which `batch_size` splits evenly.

  Lets a default run use every device when it can and fewer, rather than fail, when the batch
  does not divide; an explicit device count is checked by `check_batch` instead.
  """
  processes = jax.process_count()
  for devices in range(jax.local_device_count(), 0, -1):
    if batch_size % (devices * processes) == 0:
      return devices
  raise ValueError(f"batch_size {batch_size} does not split over {processes} processes; use a "
                   f"multiple of {processes}")


def check_batch(batch_size: int, mesh: Mesh) -> None:
  """Raises ValueError unless `batch_size` splits evenly over the mesh's devices."""
  count = mesh.devices.size
  if batch_size % count:
    fit = -(-batch_size // count) * count
    raise ValueError(f"batch_size {batch_size} does not split over {count} devices; use a "
                     f"multiple of {count} (e.g. {fit}) or fewer devices")


def shard_rows(mesh: Mesh, rows: np.ndarray) -> jax.Array:
  """A host array (the same on every process) as a global array split over `data` on axis 0.

  Each process places only the rows of its own devices, so it computes only on those.
  """
  sharding = NamedSharding(mesh, P(DATA))
  return jax.make_array_from_callback(rows.shape, sharding, lambda index: rows[index])


def replicate(mesh: Mesh, tree: Any) -> Any:
  """Host arrays (the same on every process) as global arrays replicated on every device."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: jax.make_array_from_callback(
      np.shape(x), sharding, lambda index, x=np.asarray(x): x[index]), tree)


def per_device(mesh: Mesh, first: Any, rest: Any) -> Any:
  """Stacked `[devices, ...]` global arrays: device 0 holds `first`, every other holds `rest`.

  `first` and `rest` are host pytrees of the same structure and shapes (e.g. a running state and
  an empty one), so merging all slots gives back `first`.
  """
  sharding = NamedSharding(mesh, P(DATA))
  count = mesh.devices.size

  def stack(a, b):
    a, b = np.asarray(a), np.asarray(b)
    pick = lambda index: (a if index[0].start in (0, None) else b)[None]
    return jax.make_array_from_callback((count, *a.shape), sharding, pick)

  return jax.tree.map(stack, first, rest)


def _select(flag: jax.Array, a: Any, b: Any) -> Any:
  return jax.tree.map(lambda x, y: jnp.where(flag, x, y), a, b)


def _merge_on_axis(merge: Callable[[Any, Any], Any], state: Any, count: int) -> Any:
  """Tree reduction to slot 0 with `ppermute`, then a tree broadcast back (inside shard_map).

  Each round moves one state per device, so memory stays at two states, not `count`.
  """
  index = jax.lax.axis_index(DATA)
  strides = []
  stride = 1
  while stride < count:
    strides.append(stride)
    pairs = [(i, i - stride) for i in range(stride, count, 2 * stride)]
    received = jax.lax.ppermute(state, DATA, pairs)
    takes = (index % (2 * stride) == 0) & (index + stride < count)
    state = _select(takes, merge(state, received), state)
    stride *= 2
  for stride in reversed(strides):
    pairs = [(i, i + stride) for i in range(0, count - stride, 2 * stride)]
    received = jax.lax.ppermute(state, DATA, pairs)
    state = _select(index % (2 * stride) == stride, received, state)
  return state


def merge_fn(merge: Callable[[Any, Any], Any], mesh: Mesh) -> Callable[[Any], Any]:
  """Jitted `f(stacked) -> stacked`: every slot becomes the merge of all slots.

  `merge(a, b)` must combine two states of disjoint parts of a stream (a `Stat.merge`); the
  per-device states are folded pairwise over the `data` axis with collectives.
  """
  count = mesh.devices.size

  def body(stacked):
    state = jax.tree.map(lambda x: x[0], stacked)
    merged = _merge_on_axis(merge, state, count)
    return jax.tree.map(lambda x: x[None], merged)

  return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P(DATA), out_specs=P(DATA)))


def first_local(tree: Any) -> Any:
  """Host copy of this process's first slot of stacked arrays (all slots equal after a merge)."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)


def gather_rows(x: jax.Array) -> np.ndarray:
  """The whole of a global array split over `data`, on every process (host numpy)."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def broadcast_from_primary(tree: Any) -> Any:
  """Process 0's host arrays on every process, bit for bit (floats travel as their bits).

  Every process passes a tree of the same shapes and dtypes; only process 0's values count.
  """
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  leaves, treedef = jax.tree.flatten(jax.tree.map(np.asarray, tree))
  bits = [x.view(_same_size_int(x.dtype)) for x in leaves]
  sent = multihost_utils.broadcast_one_to_all(bits)
  return jax.tree.unflatten(treedef, [np.asarray(b).view(x.dtype).reshape(x.shape)
                                      for b, x in zip(sent, leaves)])


def _same_size_int(dtype: np.dtype) -> np.dtype:
  dtype = np.dtype(dtype)
  if dtype.kind in "iub":
    return dtype
  return np.dtype(f"int{dtype.itemsize * 8}")


def is_primary() -> bool:
  """True on the process that writes files (process 0; the only one in a plain run)."""
  return jax.process_index() == 0


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_timeout_s: int = 100,
               auto: bool = False) -> bool:
  """Joins a multi-process run; returns whether one was joined.

  With `coordinator_address` (host:port of process 0), `num_processes` and `process_id` given,
  or `auto` (TPU pods, SLURM and other clusters jax detects; JAX_COORDINATOR_ADDRESS is read
  too), calls `jax.distributed.initialize` with a bounded heartbeat, so that a process that
  dies makes the others fail instead of waiting forever. CPU runs use gloo collectives.
  Must run before anything touches a device. Does nothing for a plain single-process run.
  """
  given = [coordinator_address, num_processes, process_id]
  if not auto and all(v is None for v in given):
    return False
  if not auto and any(v is None for v in given):
    raise ValueError(f"coordinator_address={coordinator_address!r}, num_processes="
                     f"{num_processes}, process_id={process_id}: give all three, or none and "
                     "auto-detection")
  if num_processes is not None and not 0 <= (process_id or 0) < num_processes:
    raise ValueError(f"process_id {process_id} is out of range for {num_processes} processes; "
                     f"valid ids are 0..{num_processes - 1}")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             heartbeat_timeout_seconds=heartbeat_timeout_s)
  return True

