"""The scene classifier's training script runs, checkpoints, resumes and writes loadable weights
(two steps on tiny batches: a smoke test, not a training run)."""

import json
import os
import pathlib
import subprocess
import sys

from jaxdissect.sceneworld import classifier as cls

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(tmp_path):
  args = [sys.executable, "-m", "experiments.train_scene_classifier", "--steps=2",
          "--batch_size=4", "--probe_n=4", "--eval_n=8", "--eval_every=100",
          "--checkpoint_every=1", "--gate=0", "--quiet", f"--workdir={tmp_path / 'work'}",
          f"--out={tmp_path / 'out'}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                        check=False)


def test_trains_resumes_and_ships(tmp_path):
  first = _run(tmp_path)
  assert first.returncode == 0, first.stderr[-3000:]
  meta = json.loads((tmp_path / "work" / "latest.json").read_text())
  assert meta["meta"]["step"] == 2
  result = json.loads((tmp_path / "out_eval.json").read_text())
  assert result["eval_n"] == 8 and 0 <= result["accuracy"] <= 1
  assert result["settings"]["steps"] == 2 and "--steps=2" in result["command"]
  model = cls.load_classifier(str(tmp_path / "out"))
  assert model.layers[-1] == "conv5_3"
  again = _run(tmp_path)
  assert again.returncode == 0 and "resuming from step 2" in again.stderr
