"""experiments.optimize_units on the planted world: finds the red unit, deterministic, resumable."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jaxdissect import planted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _command(outdir, *extra):
  return [sys.executable, "-m", "experiments.optimize_units", "--dissection", str(outdir),
          "--concept", "red", "--layer", "layer2", "--steps", "40", "--eval_n", "60",
          "--max_units", "3", "--checkpoint_every", "5", "--quiet", *extra]


def _run(command):
  proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc


@pytest.fixture(scope="module")
def dissection(tmp_path_factory):
  outdir = tmp_path_factory.mktemp("planted")
  _run([sys.executable, "-m", "experiments.dissect", "--model", "planted", "--layers", "layer2",
        "--n", "300", "--outdir", str(outdir), "--quiet", "--images=false"])
  return outdir


def _result(outdir):
  with open(outdir / "units-red.json") as f:
    return json.load(f)


def test_finds_the_red_unit_and_checks_it_discretely(dissection):
  _run(_command(dissection))
  out = _result(dissection)
  unit = planted.PLANTED["red"][1]
  assert out["ranking"][0] == unit and len(out["alpha"]) == planted.UNITS
  assert out["alpha"][unit] > 0.5 and max(a for u, a in enumerate(out["alpha"]) if u != unit) < 0.1
  assert out["verification"]["removed"][1] == pytest.approx(1.0, abs=1e-9)
  assert out["verification"]["smallest_set"] == 1 and len(out["history"]) == 40


def test_killed_run_resumes_to_the_same_coefficients(dissection, tmp_path):
  reference = _result(dissection) if (dissection / "units-red.json").exists() else None
  if reference is None:
    _run(_command(dissection))
    reference = _result(dissection)
  other = tmp_path / "copy"
  other.mkdir()
  for name in ("dissect.json",):
    (other / name).write_text((dissection / name).read_text())
  (other / "layer2").mkdir()
  (other / "layer2" / "iou.npy").write_bytes((dissection / "layer2" / "iou.npy").read_bytes())
  proc = subprocess.Popen(_command(other), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  latest = other / "units-red.checkpoint" / "latest.json"
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if latest.exists() and json.loads(latest.read_text() or "{}").get("number", -1) >= 1:
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (other / "units-red.json").exists()
  resumed = _run(_command(other))
  assert "resuming from step" in resumed.stderr
  out = _result(other)
  assert out["alpha"] == reference["alpha"] and out["history"] == reference["history"]
  assert out["verification"] == reference["verification"]
