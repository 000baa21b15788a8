"""`python -m experiments.classifier_ablation` end to end on the planted classifier, and its bad
flags as one line each.

The planted classifier's truth is known (`jaxdissect.planted_classifier`): each class's first
units in the ranking are its planted units, ablating the top one takes every class to chance
(every one-unit class passes the acceptance check at N = 1), and a dissection's labels land in
the table next to the units.
"""

import json
import pathlib
import subprocess
import sys

import pytest

import cli_support  # tests/ is on the path (no package)

from jaxdissect import planted_classifier as pc

ROOT = cli_support.ROOT
TIMEOUT = 120
PLANTED = ["--model", "jaxdissect.planted_classifier:make_planted_classifier",
           "--dataset", "planted"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return cli_support.subprocess_env(tmp_path_factory.mktemp("jax_cache"))


def _dissection(folder: pathlib.Path) -> pathlib.Path:
  """A minimal dissect.json of the planted `features` layer: planted units labelled."""
  names = {u: c for c, u in pc.PLANTED.items()}
  units = [{"unit": u, "threshold": 0.0, "label": names.get(u, "-"), "category": "color",
            "iou": 1.0 if u in names else 0.0, "interpretable": u in names}
           for u in range(pc.UNITS)]
  doc = {"model": "planted", "segmenter": "exact",
         "concepts": [{"index": i, "name": n, "category": c} for i, (n, c) in
                      enumerate(pc.CONCEPTS)],
         "layers": [{"layer": "features", "shape": [32, 32, pc.UNITS], "dirname": "features",
                     "interpretable": 7, "units": units}]}
  folder.mkdir()
  (folder / "dissect.json").write_text(json.dumps(doc))
  return folder / "dissect.json"


@pytest.fixture(scope="module")
def result(tmp_path_factory, env):
  tmp = tmp_path_factory.mktemp("ablation")
  out = tmp / "out"
  args = [*PLANTED, "--train_n", 300, "--test_n", 300, "--sizes", "1,2,4", "--top", 1,
          "--batch_size", 128, "--chunk", 12, "--dissection", _dissection(tmp / "d"),
          "--outdir", out, "--quiet"]
  proc = subprocess.run([sys.executable, "-m", "experiments.classifier_ablation",
                         *map(str, args)], cwd=tmp, env=env, capture_output=True, text=True,
                        timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads((out / "class-ablation.json").read_text()), out


def test_ranking_finds_the_planted_units_and_the_check_passes(result):
  doc, out = result
  assert doc["layer"] == "features" and doc["units"] == pc.UNITS
  assert doc["classes"] == list(pc.CLASSES)
  for k, units in enumerate(pc.CLASS_UNITS.values()):
    assert doc["ranking"][k][0] in units
  check = doc["acceptance"]
  assert check["top"] == 1 and check["classes_passing"] == len(pc.CLASSES)
  assert check["most_classes_pass"] and "is met" in check["statement"]
  curves = doc["curves"]
  assert curves["sizes"] == [1, 2, 4] and curves["n"] == 300
  assert all(abs(row[0] - 0.5) < 1e-9 for row in curves["removed"]["own"])
  assert len(curves["kept"]["all"]) == len(pc.CLASSES)
  assert len(doc["train"]["margin_drop"]) == pc.UNITS
  assert (out / "class-ablation.svg").read_text().startswith("<svg")


def test_table_names_the_planted_units(result):
  doc, _ = result
  lawn = doc["top_units"][pc.CLASSES.index("lawn")]
  assert lawn["units"][0]["unit"] == pc.PLANTED["green"]
  assert lawn["units"][0]["label"] == "green" and lawn["units"][0]["iou"] == 1.0
  assert "labels from" in doc["dissection_note"]
  assert f"#{pc.PLANTED['green']} green (1.00)" in doc["top_units_markdown"]


# Several bad command lines in one interpreter (each a fresh parse of the flags).
BATCH = cli_support.usage_batch("classifier_ablation", "run_ablation")


def test_bad_flags_are_one_line_each(tmp_path, env):
  out = ["--outdir", str(tmp_path / "out"), "--train_n", "30", "--test_n", "30"]
  cases = [
      ([*PLANTED, "--dataset", "nope", *out], "valid image sets are: sceneworld, planted"),
      (["--model", PLANTED[1], *out], "the classifier's are poppies"),
      ([*PLANTED, "--layer", "conv9", *out], "its layers are: features, pool"),
      ([*PLANTED, "--sizes", "1,2", *out], "--top=4 is not among --sizes"),
      ([*PLANTED, "--sizes", "1,x", *out], "expected whole numbers"),
      ([*PLANTED, "--sizes", "4,40", *out], "features has 32 units"),
      ([*PLANTED, "--test_n", "0", "--outdir", str(tmp_path / "o")], "positive number"),
  ]
  proc = subprocess.run([sys.executable, "-c", BATCH, *(json.dumps(a) for a, _ in cases)],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == len(cases), proc.stdout
  for line, (_, message) in zip(lines, cases):
    assert line.startswith("USAGE") and message in line, (line, message)
