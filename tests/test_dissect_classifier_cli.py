"""The classifier dissection command end to end on a folder of images, and its bad input.

Runs `python -m experiments.dissect_classifier` in a subprocess (as a user does) with a tiny
factory classifier on a temporary folder: the output folder of design §4, the numbers of the
library's own dissection of the same images, and one error line for images it cannot use.
"""

import io
import json
import subprocess
import sys

import numpy as np
import pytest

import cli_support  # tests/ is on the path (no package)
from PIL import Image

from jaxdissect import colorseg, dissect, imagefolder, imagesource
from jaxdissect.imagesource import ImageSet
from factory_models import make_classifier  # tests/ is on the path (no package)

ROOT = cli_support.ROOT
TIMEOUT = 180
ERROR = "dissect_classifier: error:"
MODEL = ["--model", "tests.factory_models:make_classifier", "--model_arg", "width=3"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return cli_support.subprocess_env(tmp_path_factory.mktemp("jax_cache"))


def _save(path, w, h, seed, fmt):
  pixels = np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)
  path.parent.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format=fmt)
  path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """12 images of mixed sizes and formats in nested folders, and a file that is not one."""
  root = tmp_path_factory.mktemp("images")
  for i in range(12):
    sub = "outdoor/" if i % 3 else ""
    _save(root / f"{sub}img{i:02d}.{'png' if i % 2 else 'jpg'}", 16 + 3 * i, 40 - 2 * i, i,
          "PNG" if i % 2 else "JPEG")
  (root / "README.txt").write_text("not an image")
  return root


def _run(args, cwd, env):
  return subprocess.run([sys.executable, "-m", "experiments.dissect_classifier", "--quiet",
                         *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=TIMEOUT)


def _error_line(proc):
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0, proc.stderr[-2000:]
  assert lines and lines[-1].startswith(ERROR), proc.stderr[-2000:]
  assert sum(line.startswith(ERROR) for line in lines) == 1, proc.stderr[-2000:]
  return lines[-1]


def test_dissects_a_folder_end_to_end(images, tmp_path, env):
  out = tmp_path / "out"
  args = [*MODEL, "--images", images, "--segmenter", "color", "--layers", "conv1,conv2",
          "--batch_size", 6, "--warmup", 12, "--topk", 4, "--tile", 16, "--outdir", out]
  proc = _run(args, tmp_path, env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  doc = json.loads((out / "dissect.json").read_text())
  assert doc["model"] == "tests.factory_models:make_classifier" and doc["segmenter"] == "color"
  assert [layer["layer"] for layer in doc["layers"]] == ["conv1", "conv2"]
  assert doc["settings"]["n"] == 12 and doc["settings"]["model_args"] == {"width": 3}
  folder = imagefolder.open_folder(str(images), (16, 16))
  record = doc["latents"]
  assert record["origin"] == str(images) and record["count"] == 12
  assert record["sha256"] == folder.record()["sha256"] and record["skipped_files"] == 1
  for layer in doc["layers"]:
    assert layer["shape"][2] == 3 and len(layer["units"]) == 3
    for u in layer["units"]:
      assert u["top"] and all(0 <= t["image"] < 12 for t in u["top"])
      with Image.open(out / u["image"]) as strip:
        assert strip.format == "JPEG" and strip.width > strip.height
  assert "<html" in (out / "report.html").read_text()[:1000].lower()
  # The numbers are the library's dissection of the same images.
  gen, seg, source = imagesource.source(make_classifier(width=3), ImageSet(folder, "x"),
                                        colorseg.make_segmenter())
  config = dissect.Config(("conv1", "conv2"), 12, batch_size=6, warmup=12, topk=4,
                          latents=source)
  for layer, r in dissect.dissect(gen, seg, config).items():
    np.testing.assert_array_equal(np.load(out / layer / "iou.npy"), r.iou.astype(np.float32))
    assert [t["image"] for t in doc["layers"][["conv1", "conv2"].index(layer)]["units"][0][
        "top"]] == [int(i) for i in r.top_indices[0] if i >= 0]


def test_a_corrupt_image_ends_the_run_with_one_line_naming_it(images, tmp_path, env):
  bad = tmp_path / "images"
  bad.mkdir()
  for i in range(8):
    _save(bad / f"{i}.png", 20, 20, i, "PNG")
  (bad / "5.png").write_bytes((bad / "5.png").read_bytes()[:100])  # truncated
  line = _error_line(_run([*MODEL, "--images", bad, "--segmenter", "color", "--batch_size", 4,
                           "--warmup", 4, "--outdir", tmp_path / "out"], tmp_path, env))
  assert "5.png" in line and ("truncated" in line or "corrupt" in line), line


# Several bad command lines in one interpreter (each a fresh parse of the flags).
BATCH = cli_support.usage_batch("dissect_classifier", "run_dissection")


def test_bad_input_gives_one_usage_line_each(images, tmp_path, env):
  (tmp_path / "empty").mkdir()
  (tmp_path / "texts").mkdir()
  (tmp_path / "texts" / "a.txt").write_text("x")
  out = ["--outdir", str(tmp_path / "out"), "--segmenter", "color"]
  cases = [  # (args, words the error must contain)
      ([*MODEL, "--images", str(tmp_path / "empty"), *out], ["empty", "no image files"]),
      ([*MODEL, "--images", str(tmp_path / "texts"), *out], ["1 other files"]),
      ([*MODEL, "--images", str(tmp_path / "nosuch"), *out], ["nosuch", "does not exist"]),
      ([*MODEL, *out], ["--images is required"]),
      (["--images", str(images), *out], ["--model is required"]),
      (["--model", "nosuch", "--images", str(images), *out], ["'nosuch'", "classifier"]),
      ([*MODEL, "--images", str(images), "--n", "13", *out], ["--n=13", "12 images"]),
      ([*MODEL, "--images", str(images), "--resize", "8", *out], ["resize", "at least 16"]),
      ([*MODEL, "--images", str(images), "--outdir", str(tmp_path / "o")],
       ["no exact labels", "--segmenter"]),
      ([*MODEL, "--images", str(images), "--layers", "conv9", *out], ["'conv9'", "conv1"]),
  ]
  proc = subprocess.run([sys.executable, "-c", BATCH, *(json.dumps(a) for a, _ in cases)],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [line for line in proc.stdout.splitlines() if line.startswith(("USAGE", "OK"))]
  assert len(lines) == len(cases), proc.stdout
  for (args, words), line in zip(cases, lines):
    assert line.startswith("USAGE") and all(w in line for w in words), (args, line)
  assert not (tmp_path / "out" / "dissect.json").exists()
