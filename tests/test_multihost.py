"""Multi-process dissection: two processes on this machine write what one process writes.

Each process has two forced CPU devices and joins the run through `jax.distributed` with gloo
collectives on 127.0.0.1; every batch is split over the four devices of the two processes and
only process 0 writes files. A process killed mid-run must make the other fail within a bounded
time without leaving a dissect.json, and the same two commands then resume and finish. Every
subprocess has a timeout, so a hang fails the test instead of blocking it.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest


ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 240  # seconds for one command
DEAD_PEER = 60  # seconds within which a survivor must give up
SCENE = ["--layers", "layer6", "--n", 120, "--batch_size", 20, "--warmup", 40,
         "--forward_chunk", 5]
PLANTED = ["--model", "planted", "--layers", "layer2", "--n", 80, "--batch_size", 20]

if "jax_cpu_collectives_implementation" not in jax.config.values:
  pytest.skip("this jax has no CPU collectives option (gloo)", allow_module_level=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _command(args, outdir):
  return [sys.executable, "-m", "experiments.dissect", "--quiet", "--images=false",
          "--outdir", str(outdir), *map(str, args)]


def _single(args, outdir, cwd) -> bytes:
  proc = subprocess.run(_command([*args, "--devices", 1], outdir), cwd=cwd, env=_env(1),
                        capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return (outdir / "dissect.json").read_bytes()


def _start_pair(args, outdir, cwd, logs):
  """Starts processes 0 and 1 of a two-process run; returns their Popen objects."""
  port = _free_port()
  procs = []
  for pid in (0, 1):
    multi = ["--coordinator_address", f"127.0.0.1:{port}", "--num_processes", 2,
             "--process_id", pid, "--heartbeat_timeout", 10]
    log = open(logs / f"p{pid}.log", "w")
    procs.append(subprocess.Popen(_command([*args, *multi], outdir), cwd=cwd, env=_env(2),
                                  stdout=log, stderr=log))
    log.close()
  return procs


def _wait(procs, timeout):
  deadline = time.monotonic() + timeout
  try:
    return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait(timeout=30)


def _pair(args, outdir, cwd, logs) -> bytes:
  codes = _wait(_start_pair(args, outdir, cwd, logs), TIMEOUT)
  assert codes == [0, 0], f"{codes}:\n" + (logs / "p0.log").read_text()[-3000:]
  return (outdir / "dissect.json").read_bytes()


@pytest.fixture(scope="module")
def scene_single(tmp_path_factory):
  """dissect.json of the one-process scene-world run."""
  folder = tmp_path_factory.mktemp("scene_single")
  return _single(SCENE, folder / "out", folder)


def test_two_processes_write_what_one_writes_planted(tmp_path):
  # The pair ranks its warmup on the devices (replicated over both processes), the single run on
  # the host: the brackets, and so the files, must agree.
  single = _single(PLANTED, tmp_path / "single", tmp_path)
  pair = _pair([*PLANTED, "--warmup_on", "device"], tmp_path / "pair", tmp_path, tmp_path)
  assert pair == single


def test_two_processes_write_what_one_writes_scene(scene_single, tmp_path):
  assert _pair(SCENE, tmp_path / "pair", tmp_path, tmp_path) == scene_single


def test_killed_process_fails_the_run_cleanly_and_it_resumes(scene_single, tmp_path):
  outdir = tmp_path / "out"
  args = [*SCENE, "--checkpoint_every", 1]
  latest = outdir / "checkpoint" / "latest.json"
  procs = _start_pair(args, outdir, tmp_path, tmp_path)
  try:
    deadline = time.monotonic() + TIMEOUT
    while (time.monotonic() < deadline and all(p.poll() is None for p in procs)
           and '"number": 2' not in (latest.read_text() if latest.exists() else "")):
      time.sleep(0.05)
    assert all(p.poll() is None for p in procs), "a process ended before it could be killed"
    os.kill(procs[1].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    (code, _) = _wait(procs, DEAD_PEER)
    took = time.monotonic() - killed_at
  finally:
    _wait(procs, 30)
  assert code != 0 and took < DEAD_PEER, (code, took)
  assert not (outdir / "dissect.json").exists()

  resumed = _pair(args, outdir, tmp_path, tmp_path)
  assert "resuming from" in (tmp_path / "p0.log").read_text()
  assert resumed == scene_single
