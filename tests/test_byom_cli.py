"""The user's own models from the command line: checkpoint and factory specs, given latents.

`--model proggan:PATH` must dissect a netdissect checkpoint exactly as the library does with the
same weights; `--model package.module:factory --model_arg k=v` must reach the factory, be
recorded, and be loaded again by the causal scripts; `--z FILE.npy` with the seeded sample's
latents must give the seeded run's numbers; every bad spec or latents file ends in one line.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import test_pth
from jaxdissect import dissect, latents, zsample
from jaxdissect.report import reader
from ports import proggan

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 240
SIZES = [16, 16, 8]  # zdim 16; layer1..layer4; 8x8 images
FACTORY = ["--model", "tests.factory_models:make_generator", "--model_arg", "width=8",
           "--model_arg", "seed=3", "--segmenter", "color"]


@pytest.fixture(scope="module")
def env():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  return env


@pytest.fixture(scope="module")
def pth_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("pth") / "tiny_lsun.pth"
  test_pth.write_proggan(path, SIZES, seed=1)
  return path


def _run(script, args, env, cwd):
  return subprocess.run([sys.executable, "-m", f"experiments.{script}", "--quiet",
                         *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=TIMEOUT)


def _ok(script, args, env, cwd):
  proc = _run(script, args, env, cwd)
  assert proc.returncode == 0, f"{args}:\n{proc.stderr[-3000:]}"
  return proc


def test_proggan_checkpoint_dissects_as_the_library_does(pth_file, env, tmp_path):
  out = tmp_path / "out"
  _ok("dissect", ["--model", f"proggan:{pth_file}", "--segmenter", "color", "--layers",
                  "layer4", "--n", 60, "--batch_size", 20, "--warmup", 20, "--images=false",
                  "--outdir", out], env, tmp_path)
  d = reader.read_dissection(str(out))
  assert d.model == f"proggan:{pth_file}" and d.segmenter == "color"
  from jaxdissect import colorseg  # pylint: disable=g-import-not-at-top
  want = dissect.dissect(proggan.load(str(pth_file)), colorseg.make_segmenter(),
                         dissect.Config(("layer4",), 60, batch_size=20, warmup=20))["layer4"]
  # Another process may round convolutions differently (XLA CPU threads): allow float noise.
  np.testing.assert_allclose(d.layer("layer4").thresholds(), want.thresholds, rtol=1e-5)
  np.testing.assert_allclose(d.iou("layer4"), want.iou, atol=1e-3)
  assert [u.label for u in d.layer("layer4").units] != []


def test_factory_spec_is_recorded_and_reloaded_by_ablate(env, tmp_path):
  out = tmp_path / "out"
  _ok("dissect", [*FACTORY, "--layers", "layer3", "--n", 60, "--batch_size", 20, "--warmup", 20,
                  "--images=false", "--outdir", out], env, tmp_path)
  d = reader.read_dissection(str(out))
  assert d.model == "tests.factory_models:make_generator"
  assert d.model_args == {"width": 8, "seed": 3} and d.segmenter == "color"
  concept = d.concepts[1][0]
  _ok("ablate", ["--dissection", out, "--concept", concept, "--layer", "layer3", "--units",
                 "0,1", "--n", 20, "--batch_size", 10], env, tmp_path)
  ace = json.loads(next(out.glob("ace-*.json")).read_text())
  assert ace["model"] == d.model and ace["units"] == [0, 1]


def test_given_latents_equal_the_seeded_run(env, tmp_path):
  n, zdim = 60, 8
  z = tmp_path / "z.npy"
  np.save(z, zsample.standard_z(n + 5, 4, zdim))
  common = [*FACTORY, "--layers", "layer3", "--n", n, "--batch_size", 20, "--warmup", 20]
  _ok("dissect", [*common, "--seed", 4, "--outdir", tmp_path / "seeded"], env, tmp_path)
  _ok("dissect", [*common, "--z", z, "--outdir", tmp_path / "given"], env, tmp_path)
  seeded, given = (json.loads((tmp_path / f / "dissect.json").read_text())
                   for f in ("seeded", "given"))
  assert seeded["layers"] == given["layers"]  # thresholds, IoU, labels and top images
  assert given["latents"]["source"] == "array" and given["latents"]["count"] == n + 5
  assert given["latents"]["sha256"] == latents.load_npy(str(z)).record()["sha256"]
  assert seeded["latents"] == {"source": "seed", "seed": 4}
  strips = sorted((tmp_path / "given" / "layer3" / "units").glob("*.jpg"))
  assert strips and all((tmp_path / "seeded" / "layer3" / "units" / s.name).read_bytes()
                        == s.read_bytes() for s in strips)


def test_bad_specs_and_latents_fail_with_one_line(env, tmp_path):
  np.save(tmp_path / "short.npy", np.zeros((5, 8), np.float32))
  np.save(tmp_path / "wide.npy", np.zeros((100, 9), np.float32))
  (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY junk")
  cases = [
      (["--model", "nosuch"], ["'nosuch'", "sceneworld"]),
      (["--model", "proggan:/no/such.pth"], ["proggan:/no/such.pth", "no such file"]),
      (["--model", "tests.factory_models:not_a_model"], ["not_a_model", "Generator"]),
      (["--model", "tests.no_module:make"], ["tests.no_module"]),
      (["--model", "tests.factory_models:make_generator", "--model_arg", "width"], ["width"]),
      (["--model", "tests.factory_models:make_generator", "--model_arg", "depth=3"], ["depth"]),
      (["--segmenter", "semseg:a.pth"], ["semseg"]),
      ([*FACTORY, "--z", tmp_path / "short.npy"], ["5 rows", "100"]),
      ([*FACTORY, "--z", tmp_path / "wide.npy"], ["[100, 9]", "8"]),
      ([*FACTORY, "--z", tmp_path / "junk.npy"], ["junk.npy"]),
      ([*FACTORY, "--z", tmp_path / "none.npy"], ["none.npy"]),
  ]
  failures = []
  for flags, words in cases:
    proc = _run("dissect", [*flags, "--n", 100, "--outdir", tmp_path / "out"], env, tmp_path)
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("dissect: error:")]
    if proc.returncode == 0 or len(errors) != 1 or lines[-1] != errors[0]:
      failures.append(f"{flags}: status {proc.returncode}, stderr ends {proc.stderr[-800:]}")
    elif missing := [str(w) for w in words if str(w) not in errors[0]]:
      failures.append(f"{flags}: {missing} not in {errors[0]!r}")
  assert not failures, "\n".join(failures)
  assert not (tmp_path / "out" / "dissect.json").exists()
