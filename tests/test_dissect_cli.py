"""The dissection command end to end, as a user runs it: results, resuming, and bad input.

`experiments/dissect.py` promises planted units found with their concepts, a resumed run (after
SIGKILL, or with a larger --n) that writes exactly what an uninterrupted run writes, and bad
flags that end in one error line without leaving anything that spoils the next run. Only a real
process shows these, so every test runs the command in a subprocess (with a timeout, so a hang
fails). The working folder is a temporary one, with the repository on PYTHONPATH, so a default
or mistaken relative --outdir can never write into the repository's results/.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from jaxdissect import planted
from jaxdissect.report import browser

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 180  # seconds for one command; each takes a few
ERROR = "dissect: error:"
CACHE = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")

# The scene-world runs: its cheapest layer (12 units), batches of 20 so checkpoints come often.
SCENE_BATCH = 20
SCENE = ["--layers", "layer10", "--batch_size", SCENE_BATCH, "--images=false"]
SCENE_N = 200
PLANTED = ["--model", "planted", "--layers", "layer2"]

# Registers test segmenters whose labels cannot match the planted images, then runs the CLI.
# (The built-in cross pairs both run: the scene segmenter takes any size that is a multiple of 16,
# such as the planted 32x32 images, and the colour oracle takes any size.)
FAKE_SEGMENTERS = """
from absl import app
from experiments import dissect
from jaxdissect import errors, model, planted, zoo

def coarse():  # labels at a quarter of the image size: 8x8 for the planted 32x32 images
  o = planted.make_oracle_segmenter()
  return model.Segmenter(o.segment_fn, lambda p, x: o.label_fn(p, x[:, ::4, ::4]), o.params,
                         o.concepts)

def only64():  # accepts 64x64 images only, like a segmenter trained at one size
  o = planted.make_oracle_segmenter()
  def label(p, x):
    errors.check_shape("images", x.shape, (None, 64, 64, 3))
    return o.label_fn(p, x)
  return model.Segmenter(o.segment_fn, label, o.params, o.concepts)

zoo.SEGMENTERS.update(coarse=coarse, only64=only64)
app.run(dissect.main)
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """The commands' working folder (relative paths land here, not in the repository)."""
  return tmp_path_factory.mktemp("cwd")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """The commands' environment: this checkout first on the path, a shared compilation cache."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  env.update(zip(CACHE, [str(tmp_path_factory.mktemp("jax_cache")), "0.1"]))
  return env


def _command(args, script=None):
  head = ["-c", script] if script else ["-m", "experiments.dissect"]
  return [sys.executable, *head, "--quiet", *map(str, args)]


def _run(args, workdir, env, script=None):
  """Runs the CLI to completion; returns the CompletedProcess (text stderr)."""
  return subprocess.run(_command(args, script), cwd=workdir, env=env, capture_output=True,
                        text=True, timeout=TIMEOUT)


def _ok(args, workdir, env):
  """Runs the CLI and asserts it succeeded; returns its stderr."""
  proc = _run(args, workdir, env)
  assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
  return proc.stderr


def _error_line(proc, args):
  """Asserts a failure whose stderr ends in one 'dissect: error:' line; returns that line."""
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0, f"{args} succeeded:\n{proc.stderr[-2000:]}"
  assert lines and lines[-1].startswith(ERROR), f"{args}: stderr ends:\n{proc.stderr[-2000:]}"
  assert sum(line.startswith(ERROR) for line in lines) == 1, proc.stderr[-2000:]
  return lines[-1]


def _doc(outdir):
  return json.loads((outdir / "dissect.json").read_text())


def _assert_same_results(outdir, expected):
  """Same dissect.json bytes and same per-layer arrays as the run in `expected`."""
  assert (outdir / "dissect.json").read_bytes() == (expected / "dissect.json").read_bytes(), (
      "dissect.json differs")
  for layer in _doc(expected)["layers"]:
    for name in ("iou.npy", "thresholds.npy"):
      np.testing.assert_array_equal(np.load(outdir / layer["dirname"] / name),
                                    np.load(expected / layer["dirname"] / name))


# ------------------------------------------------------------------------------- planted world


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, workdir, env):
  """Output folder of the planted acceptance run (1,000 images, unit strips included)."""
  outdir = tmp_path_factory.mktemp("planted")
  _ok([*PLANTED, "--n", 1000, "--batch_size", 100, "--outdir", outdir], workdir, env)
  return outdir


def test_planted_units_found_and_nothing_else(planted_run):
  doc = _doc(planted_run)
  assert doc["model"] == "planted" and doc["segmenter"] == "planted"
  (layer,) = doc["layers"]
  assert layer["layer"] == "layer2"
  units = {u["unit"]: u for u in layer["units"]}
  assert sorted(units) == list(range(planted.UNITS))
  found = set()
  for concept, (layer_name, unit) in planted.PLANTED.items():
    assert layer_name == "layer2"
    u = units[unit]
    assert u["label"] == concept and u["iou"] >= 0.9 and u["interpretable"], u
    found.add(unit)
  others = {u: r["iou"] for u, r in units.items() if u not in found and r["interpretable"]}
  assert not others, f"units other than the planted ones are interpretable: {others}"
  assert layer["interpretable"] == len(planted.PLANTED)
  assert layer["concept_counts"] == {c: 1 for c in planted.PLANTED}


def test_planted_output_contract(planted_run):
  doc = _doc(planted_run)
  assert {"model", "segmenter", "settings", "concepts", "layers"} <= doc.keys()
  assert doc["settings"]["n"] == 1000 and doc["settings"]["layers"] == ["layer2"]
  names = [c["name"] for c in doc["concepts"]]
  assert names == [name for name, _ in planted.CONCEPTS]
  (layer,) = doc["layers"]
  assert {"layer", "shape", "interpretable", "concept_counts", "units"} <= layer.keys()
  assert layer["shape"] == [8, 8, planted.UNITS]
  for u in layer["units"]:
    assert {"unit", "threshold", "label", "category", "iou", "interpretable", "top"} <= u.keys()
    assert u["top"] and all(set(t) == {"image", "max"} and 0 <= t["image"] < 1000
                            for t in u["top"]), u["top"]

  folder = planted_run / "layer2"
  iou = np.load(folder / "iou.npy")
  assert iou.shape == (planted.UNITS, len(planted.CONCEPTS)) and iou.dtype == np.float32
  thresholds = np.load(folder / "thresholds.npy")
  assert thresholds.shape == (planted.UNITS,)
  for u in layer["units"]:
    row = iou[u["unit"]]
    assert names[int(np.argmax(row))] == u["label"]
    np.testing.assert_allclose(row[names.index(u["label"])], u["iou"], rtol=1e-6)
    np.testing.assert_allclose(thresholds[u["unit"]], u["threshold"], rtol=1e-6)

  with Image.open(folder / "units" / "unit0003.jpg") as strip:
    assert strip.format == "JPEG" and strip.width > strip.height > 0
    strip.load()
  assert ET.parse(folder / "concepts.svg").getroot().tag.endswith("svg")
  assert "<html" in (planted_run / "report.html").read_text()[:1000].lower()


@pytest.mark.skipif(not os.access(browser.DEFAULT_CHROMIUM, os.X_OK),
                    reason=f"no {browser.DEFAULT_CHROMIUM}; install Debian's chromium to check the "
                    "report in a headless browser")
def test_report_renders_every_unit_in_headless_chromium(planted_run):
  status = browser.check_report(str(planted_run), "layer2")
  assert status["units"] == planted.UNITS
  assert status["images_loaded"] == planted.UNITS and status["images_failed"] == 0


def test_checkpoint_of_other_settings_needs_fresh(planted_run, tmp_path, workdir, env):
  outdir = tmp_path / "out"
  shutil.copytree(planted_run, outdir)
  before = (outdir / "dissect.json").read_bytes()
  args = ["--model", "planted", "--layers", "layer1", "--n", 1000, "--images=false",
          "--outdir", outdir]
  line = _error_line(_run(args, workdir, env), args)
  assert "--fresh" in line and "layer1" in line and "layer2" in line, line
  assert (outdir / "dissect.json").read_bytes() == before
  _ok([*args, "--fresh"], workdir, env)
  assert [r["layer"] for r in _doc(outdir)["layers"]] == ["layer1"]


def test_larger_n_after_refining_passes_equals_fresh_run(tmp_path, workdir, env):
  # The planted world needs more than one pass, so the finished run's brackets were refined on
  # its 200 images; asked for 300, the command must still give what a fresh run gives.
  args = [*PLANTED, "--images=false", "--outdir"]
  _ok([*args, tmp_path / "grown", "--n", 200], workdir, env)
  _ok([*args, tmp_path / "grown", "--n", 300], workdir, env)
  _ok([*args, tmp_path / "fresh", "--n", 300], workdir, env)
  _assert_same_results(tmp_path / "grown", tmp_path / "fresh")


# --------------------------------------------------------------------------------- scene world


@pytest.fixture(scope="module")
def scene_reference(tmp_path_factory, workdir, env):
  """Output folder of an uninterrupted scene-world run of SCENE_N images."""
  outdir = tmp_path_factory.mktemp("scene_reference")
  _ok([*SCENE, "--n", SCENE_N, "--outdir", outdir], workdir, env)
  return outdir


def _checkpoint_number(latest):
  try:
    return json.loads(latest.read_text())["number"]
  except (FileNotFoundError, ValueError, KeyError):
    return -1


def test_resume_after_sigkill_writes_identical_results(scene_reference, tmp_path, workdir, env):
  outdir = tmp_path / "out"
  args = [*SCENE, "--n", SCENE_N, "--checkpoint_every", 1, "--outdir", outdir]
  # Checkpoint 0 is the warmup's; checkpoint k holds k batches. Kill well inside the pass.
  kill_at, last_batch = 3, SCENE_N // SCENE_BATCH
  latest = outdir / "checkpoint" / "latest.json"
  plain = {k: v for k, v in env.items() if k not in CACHE}  # kill no cache write
  log_path = tmp_path / "killed.log"
  with open(log_path, "w") as log:
    proc = subprocess.Popen(_command(args), cwd=workdir, env=plain, stdout=log, stderr=log)
    try:
      deadline = time.monotonic() + TIMEOUT
      number = -1
      while proc.poll() is None and time.monotonic() < deadline and number < kill_at:
        time.sleep(0.02)
        number = _checkpoint_number(latest)
      alive = proc.poll() is None
      if alive:
        os.kill(proc.pid, signal.SIGKILL)
    finally:
      if proc.poll() is None:
        proc.kill()
      proc.wait(timeout=60)
  log = log_path.read_text()[-3000:]
  assert alive, f"the run ended (status {proc.returncode}) before it could be killed:\n{log}"
  assert kill_at <= number < last_batch, f"not killed mid-pass (checkpoint {number}):\n{log}"
  assert proc.returncode == -signal.SIGKILL
  assert not (outdir / "dissect.json").exists()

  stderr = _ok(args, workdir, env)
  resumed = re.search(r"resuming from .*: pass 1, (\d+) images tallied", stderr)
  assert resumed and 0 < int(resumed.group(1)) < SCENE_N, stderr[-3000:]
  _assert_same_results(outdir, scene_reference)
  leftovers = sorted(os.listdir(outdir / "checkpoint"))
  assert len(leftovers) == 2 and leftovers[0] == "latest.json", leftovers


def test_larger_n_continues_finished_run(scene_reference, tmp_path, workdir, env):
  outdir = tmp_path / "out"
  _ok([*SCENE, "--n", SCENE_N // 2, "--outdir", outdir], workdir, env)
  assert _doc(outdir)["settings"]["n"] == SCENE_N // 2
  stderr = _ok([*SCENE, "--n", SCENE_N, "--outdir", outdir], workdir, env)
  tallied = f"pass 1, {SCENE_N // 2} images tallied"
  assert re.search(f"resuming from .*: {tallied}", stderr), stderr[-3000:]
  _assert_same_results(outdir, scene_reference)


# ---------------------------------------------------------------------------------- bad input


def test_bad_input_fails_with_one_line_and_spoils_nothing(tmp_path, workdir, env):
  out = tmp_path / "out"
  cases = [  # (flags, script, words the error line must contain)
      (["--layers", "layer99"], None, ["'layer99'", "layer1", "layer10"]),
      (["--model", "planted", "--threshold", "1.5"], None, ["1.5", "0 < q < 1", "iqr"]),
      (["--model", "planted", "--threshold", "abc"], None, ["'abc'", "iqr"]),
      (["--model", "planted", "--interpretable", "gandissect"], None, ["'gandissect'", "IQR"]),
      (["--model", "nosuch"], None, ["'nosuch'", "sceneworld", "planted"]),
      (["--model", "planted", "--segmenter", "nosuch"], None,
       ["'nosuch'", "sceneworld", "planted"]),
      (["--model", "planted", "--segmenter", "coarse", "--layers", "layer3"], FAKE_SEGMENTERS,
       ["layer3", "32x32", "8x8"]),
      (["--model", "planted", "--segmenter", "only64", "--layers", "layer2"], FAKE_SEGMENTERS,
       ["[32, 32, 3]", "64"]),
  ]
  failures = []
  for flags, script, words in cases:
    args = [*flags, "--n", 100, "--outdir", out]
    try:
      line = _error_line(_run(args, workdir, env, script), args)
      missing = [w for w in words if w not in line]
      assert not missing, f"{args}: {missing} not in {line!r}"
      assert not (out / "checkpoint").exists() and not (out / "dissect.json").exists(), args
    except AssertionError as e:
      failures.append(str(e))
  assert not failures, "\n\n".join(failures)
  _ok([*PLANTED, "--n", 100, "--images=false", "--outdir", out], workdir, env)
  assert _doc(out)["model"] == "planted"


def test_bad_outdir_fails_with_one_line(tmp_path, workdir, env):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  cases = [("", ["--outdir", "empty"]),
           (blocker / "sub", [str(blocker / "sub"), "not writable"]),
           (blocker, [str(blocker), "not a folder"])]
  for outdir, words in cases:
    args = [*PLANTED, "--n", 100, "--outdir", outdir]
    line = _error_line(_run(args, workdir, env), args)
    assert all(w in line for w in words), (words, line)
  assert blocker.read_text() == "not a folder"
  assert not (workdir / "results").exists(), "an empty --outdir fell back to the default"
