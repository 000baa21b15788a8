"""`--compat` from the command line: the preset's flags land in dissect.json, flags given
explicitly win, and the original's definitions still find the planted units."""

import json
import subprocess
import sys

import cli_support
from jaxdissect import planted

BATCH = cli_support.usage_batch("dissect", "run_dissection")
COMMON = ["--model", "planted", "--segmenter", "planted", "--layers", "layer2", "--n", "120",
          "--batch_size", "40", "--warmup", "40", "--images=false"]


def test_presets_set_the_definitions_and_explicit_flags_win(tmp_path):
  runs = {"gandissect": ["--compat", "gandissect"],
          "gandissect_q": ["--compat", "gandissect", "--threshold", "0.01"],
          "pnas": ["--compat", "pnas"]}
  argv = [json.dumps([*COMMON, *flags, "--outdir", str(tmp_path / name)])
          for name, flags in runs.items()]
  out = subprocess.run([sys.executable, "-c", BATCH, *argv], capture_output=True, text=True,
                       cwd=cli_support.ROOT, env=cli_support.subprocess_env(tmp_path / "cache"),
                       timeout=600)
  assert out.stdout.split() == ["OK"] * 3, out.stdout + out.stderr[-3000:]
  docs = {name: json.loads((tmp_path / name / "dissect.json").read_text()) for name in runs}
  want = {"gandissect": ("iqr", "raw", "category", 2, "IQR > 0.01 and IoU > 0.05"),
          "gandissect_q": ("0.01", "raw", "category", None, "IQR > 0.01 and IoU > 0.05"),
          "pnas": ("0.01", "upsampled", "plain", None, "IoU > 0.04")}
  for name, (threshold, quantile_of, iou, seed, rule) in want.items():
    settings = docs[name]["settings"]
    got = (settings["threshold"], settings["quantile_of"], settings["iou"],
           settings["threshold_seed"], docs[name]["interpretable"]["rule"])
    assert got == (threshold, quantile_of, iou, seed, rule), (name, got)
  (layer,) = docs["gandissect"]["layers"]
  labels = {u["unit"]: u["label"] for u in layer["units"] if u["interpretable"]}
  assert labels == {unit: concept for concept, (_, unit) in planted.PLANTED.items()}
