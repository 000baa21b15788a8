"""The face-parts quality script: its geometry checks on hand-drawn part maps (a face, the same
face upside down, missing parts), the summary's counting, and the command on a few face-GAN
images (skipped without the mediapipe and gan-face-generate wheels)."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import faceparts_quality as quality
from ports import faceparts

ROOT = pathlib.Path(__file__).resolve().parents[1]
L = faceparts.LABEL


def _face() -> np.ndarray:
  """A 32x32 front face: head above, skin oval, brows, eyes with irises, nose, lips, mouth."""
  m = np.full((32, 32), L["background"], np.int32)
  m[0:28, 4:28] = L["head"]
  m[6:30, 7:25] = L["skin"]
  m[9:11, 9:14] = m[9:11, 18:23] = L["brow"]
  m[12:15, 9:14] = m[12:15, 18:23] = L["eye"]
  m[13, 11] = m[13, 20] = L["iris"]
  m[14:20, 15:17] = L["nose"]
  m[22:26, 12:20] = L["lips"]
  m[23:25, 14:18] = L["mouth"]
  return m


def test_a_face_passes_every_check_and_upside_down_fails_the_vertical_ones():
  assert quality.image_checks(_face()) == {name: True for name in quality.CHECKS}
  flipped = quality.image_checks(_face()[::-1])
  for name in ("eyes_above_lips", "brows_above_eyes", "nose_between_eyes_and_lips",
               "head_above_face"):
    assert flipped[name] is False, name
  for name in ("eyes_either_side_of_nose", "eyes_level", "lips_under_nose", "mouth_within_lips"):
    assert flipped[name] is True, name


def test_missing_parts_and_one_sided_eyes():
  face = _face()
  face[face == L["lips"]] = L["skin"]
  face[face == L["mouth"]] = L["skin"]
  checks = quality.image_checks(face)
  assert checks["eyes_above_lips"] is None and checks["mouth_within_lips"] is None
  assert checks["brows_above_eyes"] is True
  one_eye = _face()
  one_eye[12:15, 18:23] = L["skin"]
  checks = quality.image_checks(one_eye)
  assert checks["eyes_either_side_of_nose"] is False and checks["eyes_level"] is False


def test_summary_counts_confident_images_only():
  unknown = np.full((32, 32), L["unknown"], np.int32)
  labels = np.stack([_face(), _face()[::-1], unknown])
  doc = quality.summarize(labels, np.asarray([0.9, 0.8, 0.1]), 0.5)
  assert doc["confident"] == 2 and doc["share_confident"] == pytest.approx(2 / 3)
  assert doc["unknown_images"] == [2]
  above = doc["checks"]["eyes_above_lips"]
  assert (above["passed"], above["failed"], above["missing"], above["of"]) == (1, 1, 0, 2)
  assert doc["gate"] == {"check": "eyes_above_lips", "at_least": 0.99, "share": 0.5,
                         "holds": False}
  assert doc["parts"]["eye"]["images_with_part"] == 1.0
  assert doc["parts"]["eye"]["pixel_share"] == pytest.approx(28 / 1024)
  assert sum(doc["face_score"]["histogram"]["counts"]) == 3
  with pytest.raises(ValueError, match="disagree"):
    quality.summarize(labels, np.asarray([0.9, 0.8, 0.9]), 0.5)


def test_sheet_has_one_pair_of_tiles_per_image_and_a_legend():
  images = np.zeros((3, 32, 32, 3), np.float32)
  labels = np.stack([_face()] * 3)
  sheet = quality.sheet(images, labels, np.asarray([0.9, 0.2, 0.7]), 0.5, tile=32, columns=2)
  assert sheet.size == (2 * 32 + 4, 2 * (2 * 32 + 4) + 8 + 28)
  pixel = np.asarray(sheet)[32 + 4 + 20, 16]  # the first map's skin, below its score text
  assert tuple(pixel) == quality.PALETTE["skin"]


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None
                    or importlib.util.find_spec("gan_face_generate") is None,
                    reason="needs `pip install --no-deps mediapipe==0.10.21 "
                    "gan-face-generate==1.1.1`")
def test_the_command_on_four_face_gan_images(tmp_path):
  out = tmp_path / "docs" / "quality"
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, "-m", "experiments.faceparts_quality", "--n", "4",
                         "--batch_size", "4", "--sheet", "4", "--tile", "32", "--quiet",
                         "--out", str(out)], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  doc = json.loads(out.with_suffix(".json").read_text())
  assert doc["images"] == 4 and doc["settings"]["seed"] == 1
  assert doc["confident"] + len(doc["unknown_images"]) == 4 and doc["confident"] >= 2
  assert doc["checks"]["eyes_above_lips"]["of"] == doc["confident"]
  assert out.with_suffix(".png").stat().st_size > 0
