"""`python -m experiments.classifier_attack` end to end on the planted classifier: the attack
reaches the target by moving the target's planted unit far more than the others, the JSON and
chart are written, and a resumed run gives the same JSON as an uninterrupted one."""

import json
import subprocess
import sys

import pytest

import cli_support  # tests/ is on the path (no package)

from jaxdissect import planted_classifier as pc

ROOT = cli_support.ROOT
TIMEOUT = 120
ARGS = ["--model", "jaxdissect.planted_classifier:make_planted_classifier", "--dataset",
        "planted", "--train_n", 300, "--batch_size", 128, "--chunk", 32, "--targets",
        "poppies,lawn", "--n", 40, "--per_target", 4, "--attack_batch", 2, "--steps", 50,
        "--search_steps", 2, "--top", 1, "--quiet"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return cli_support.subprocess_env(tmp_path_factory.mktemp("jax_cache"))


def _run(out, env, *extra):
  proc = subprocess.run([sys.executable, "-m", "experiments.classifier_attack",
                         *map(str, [*ARGS, "--outdir", out, *extra])], cwd=out.parent, env=env,
                        capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory, env):
  out = tmp_path_factory.mktemp("attack") / "out"
  _run(out, env)
  return out


def test_attack_moves_the_targets_planted_unit(run):
  doc = json.loads((run / "class-attack.json").read_text())
  assert doc["layer"] == "features" and doc["ranking_source"].startswith("ranked here")
  for name in ("poppies", "lawn"):
    r = doc["targets"][name]
    assert r["attacked"] == 4 and r["success_rate"] == 1.0
    assert r["top_units"] == [pc.CLASS_UNITS[name][0]]
    assert r["separated"] and r["top_units_change"] > 5 * r["other_units_change"]
    assert r["top_units_change"] > 3 * r["control_units_change"]  # other classes' units
    assert len(r["control_units"]) == len(pc.CLASSES) - 1
    assert r["top_units_rank_by_change"] == [1] and "do not overlap" in r["statement"]
    assert len(r["per_unit_change"]) == pc.UNITS and len(doc["images"][name]) == 4
  assert (run / "class-attack.svg").read_text().startswith("<svg")


def test_a_resumed_run_writes_the_same_json(run, env):
  first = (run / "class-attack.json").read_text()
  pointer = run / "class-attack.checkpoint" / "latest.json"
  latest = json.loads(pointer.read_text())
  assert latest["meta"]["done"] == 4  # 2 targets x 2 batches
  latest["meta"]["done"] = 1  # as if killed after the first batch
  pointer.write_text(json.dumps(latest))
  proc = _run(run, env)
  assert "resuming after 1 of 4 batches" in proc.stderr
  assert (run / "class-attack.json").read_text() == first
  other = subprocess.run([sys.executable, "-m", "experiments.classifier_attack",
                          *map(str, [*ARGS, "--outdir", run, "--steps", 40])], cwd=run.parent,
                         env=env, capture_output=True, text=True, timeout=TIMEOUT)
  assert other.returncode == 2 and "pass --fresh" in other.stderr.strip().splitlines()[-1]
