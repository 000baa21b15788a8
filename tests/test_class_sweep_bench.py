"""The class-sweep benchmark end to end on a few scenes: both sweeps timed, the same accuracies,
the JSON record and the Markdown table written."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_class_sweep_benchmark_runs_and_agrees(tmp_path):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  out, md = tmp_path / "sweep.json", tmp_path / "sweep.md"
  proc = subprocess.run([sys.executable, "-m", "experiments.benchmarks.class_sweep", "--n", "12",
                         "--batch_size", "8", "--chunks", "64,200", "--repeats", "1", "--out",
                         str(out), "--markdown", str(md)], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads(out.read_text())["layers"]["conv5_3"]
  assert record["units"] == 128
  assert set(record["seconds"]) == {"loop", "vmapped_64", "vmapped_128"}
  assert all(record["identical"].values()) and not any(record["max_abs_difference"].values())
  table = md.read_text()
  assert "| conv5_3 | 128 | Python loop, one unit per call |" in table
  assert "vmapped, 128 units per call" in table and "yes, exactly" in table
  assert "-core" in table and "class_sweep --n 12" in table
