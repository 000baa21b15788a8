"""Flags for where a run computes: how many local devices, and joining a multi-process run.

Every batch is split over a 1-D device mesh (`jaxdissect.sharding`); these flags choose it and,
before any device is touched, join the processes of a multi-host run.
"""

from __future__ import annotations

from absl import flags, logging
import jax
from jax.sharding import Mesh

from experiments.cli import UsageError
from jaxdissect import sharding

_DEVICES = flags.DEFINE_integer("devices", None, "Local devices to split batches over (default: "
                                "all that split --batch_size evenly); the first N of each process.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 in a "
                                   "multi-process run (with --num_processes, --process_id).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0..num_processes-1.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Join a multi-process run that jax "
                                 "detects (TPU pods, SLURM, JAX_COORDINATOR_ADDRESS).")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout", 100, "Seconds after which the processes "
                                  "of a multi-process run give up on one that stopped answering.")


def join_processes() -> None:
  """Joins a multi-process run when the flags ask for one (call before touching any device)."""
  try:
    sharding.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                        heartbeat_timeout_s=_HEARTBEAT.value, auto=_DISTRIBUTED.value)
  except ValueError as e:
    raise UsageError(str(e)) from None


def mesh_for(batch_size: int) -> Mesh:
  """The data mesh `--devices` asks for, or the most devices that split the batch evenly."""
  try:
    devices = _DEVICES.value
    if devices is None:
      devices = sharding.devices_for_batch(batch_size)
      if devices < jax.local_device_count():
        logging.info("Using %d of %d local devices: --batch_size %d splits evenly over %d; pass "
                     "--devices to insist on more.", devices, jax.local_device_count(),
                     batch_size, devices)
    mesh = sharding.data_mesh(devices)
    sharding.check_batch(batch_size, mesh)
  except ValueError as e:
    raise UsageError(f"--devices/--batch_size: {e}") from None
  return mesh
