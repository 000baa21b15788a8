"""experiments.ablate on the planted world: curves by IoU and by single-unit ACE."""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from jaxdissect import planted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)


@pytest.fixture(scope="module")
def dissection(tmp_path_factory):
  outdir = tmp_path_factory.mktemp("planted")
  proc = _run("experiments.dissect", "--model", "planted", "--layers", "layer2", "--n", "300",
              "--outdir", str(outdir), "--quiet", "--images=false")
  assert proc.returncode == 0, proc.stderr[-2000:]
  return outdir


def test_curves_remove_all_red_with_the_planted_unit_first(dissection):
  proc = _run("experiments.ablate", "--dissection", str(dissection), "--concept", "red",
              "--max_units", "5", "--n", "80", "--batch_size", "40", "--quiet")
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(dissection / "ablation-red.json") as f:
    out = json.load(f)
  assert out["layer"] == "layer2" and set(out["rankings"]) == {"iou", "ace"}
  red_unit = planted.PLANTED["red"][1]
  for curve in out["rankings"].values():
    assert curve["units"][0] == red_unit
    assert curve["removed"][0] == pytest.approx(0.0, abs=1e-9)
    assert curve["removed"][1:] == pytest.approx([1.0] * 5, abs=1e-9)
    assert len(curve["ci99"]) == 6 and curve["baseline"] > 0.005
  assert min(out["single_unit_ace"]["delta"]) == out["single_unit_ace"]["delta"][red_unit]
  assert ET.parse(dissection / "ablation-red.svg").getroot().tag.endswith("svg")


def test_bad_concept_and_missing_alpha_are_one_line_errors(dissection):
  proc = _run("experiments.ablate", "--dissection", str(dissection), "--concept", "purple")
  assert proc.returncode == 2 and "'purple'" in proc.stderr and "red, green, blue" in proc.stderr
  proc = _run("experiments.ablate", "--dissection", str(dissection), "--concept", "red",
              "--rankings", "alpha")
  assert proc.returncode == 2 and "optimize_units" in proc.stderr.splitlines()[-1]


def test_insertion_context_adds_green_off_green(dissection):
  proc = _run("experiments.insert", "--dissection", str(dissection), "--concept", "green",
              "--units", "1", "--value_scale", "20", "--n", "12", "--batch_size", "6", "--quiet")
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(dissection / "insertion-green.json") as f:
    out = json.load(f)
  assert out["units"] == [planted.PLANTED["green"][1]]
  context = out["context"]
  assert context["red"]["added"] == pytest.approx(1 / 64, abs=1e-6)
  assert all(v["count"] > 0 for v in context.values())
  assert ET.parse(dissection / "insertion-green.svg").getroot().tag.endswith("svg")
