"""experiments.ablate on the planted world: curves by IoU and by single-unit ACE."""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
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


def test_unit_set_ace_of_ablation_and_insertion(dissection):
  red, green = planted.PLANTED["red"][1], planted.PLANTED["green"][1]
  proc = _run("experiments.ablate", "--dissection", str(dissection), "--concept", "red",
              "--units", f"{red},{green}", "--n", "40", "--batch_size", "20",
              "--insert_value", "concept_mean", "--value_scale", "3", "--name", "pair",
              "--quiet")
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(dissection / "ace-red-pair.json") as f:
    out = json.load(f)
  assert out["units"] == sorted([red, green])
  ablation, insertion = out["ablation"], out["insertion"]
  assert ablation["red"]["edited"] == 0.0 and ablation["green"]["edited"] == 0.0
  assert ablation["red"]["delta"] == pytest.approx(-ablation["red"]["baseline"])
  assert ablation["blue"]["delta"] == 0.0  # other concepts untouched (planted: exactly)
  assert insertion["red"]["delta"] - insertion["red"]["ci99"] > 0  # inserting adds red
  assert insertion["blue"]["delta"] <= 0


def test_masked_curve_measures_inside_the_stroke(dissection, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  stroke = np.zeros((32, 32), np.uint8)
  stroke[:, :16] = 255
  Image.fromarray(stroke).save(tmp_path / "left.png")
  proc = _run("experiments.ablate", "--dissection", str(dissection), "--concept", "red",
              "--mask", str(tmp_path / "left.png"), "--rankings", "iou", "--max_units", "2",
              "--n", "40", "--batch_size", "20", "--quiet")
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(dissection / "ablation-red.json") as f:
    out = json.load(f)
  assert out["settings"]["mask"].endswith("left.png")
  assert out["rankings"]["iou"]["removed"][1:] == pytest.approx([1.0, 1.0], abs=1e-9)


def test_mask_saved_from_the_paint_page_is_read_by_its_alpha(dissection, tmp_path):
  """The page's stroke PNG (black, opaque, on a transparent canvas) is no empty mask: inside is
  where alpha > 0, as the paint server reads it (`jaxdissect.masks`)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rgba = np.zeros((32, 32, 4), np.uint8)
  rgba[:, :16, 3] = 255  # black (0, 0, 0) strokes, opaque, on the left half
  Image.fromarray(rgba, "RGBA").save(tmp_path / "page-stroke.png")
  proc = _run("experiments.ablate", "--dissection", str(dissection), "--concept", "red",
              "--mask", str(tmp_path / "page-stroke.png"), "--rankings", "iou", "--max_units",
              "2", "--n", "40", "--batch_size", "20", "--quiet")
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(dissection / "ablation-red.json") as f:
    out = json.load(f)
  assert out["settings"]["mask"].endswith("page-stroke.png")
  curve = out["rankings"]["iou"]
  assert curve["baseline"] > 0  # the stroke covers red pixels: the mask is not empty
  assert curve["removed"][1:] == pytest.approx([1.0, 1.0], abs=1e-9)


@pytest.mark.parametrize("args, message", [
    (["--units="], "empty unit set"),
    (["--units", "3,99"], "unit 99 is out of range; layer2 has units 0..7"),
    (["--units", "3,x"], "'x' is not a unit number"),
    (["--concept", "door"], "valid concepts are"),
    (["--mask", "MASK16"], "is 16x16 pixels; draw it at the generated image's size, 32x32"),
    (["--mask", "NOTPNG"], "not a readable image"),
])
def test_bad_inputs_exit_nonzero_with_a_clear_message(dissection, tmp_path, args, message):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "m16.png")
  (tmp_path / "bad.png").write_bytes(b"not a png")
  args = [{"MASK16": str(tmp_path / "m16.png"), "NOTPNG": str(tmp_path / "bad.png")}.get(a, a)
          for a in args]
  proc = _run("experiments.ablate", "--dissection", str(dissection), "--concept", "red", *args)
  assert proc.returncode != 0
  assert message in proc.stderr.splitlines()[-1], proc.stderr[-1000:]
