"""The shipped scene segmenter: it loads, reproduces its recorded accuracy, keeps the segmenter
protocol (soft, differentiable probabilities; valid discrete labels) and fails loudly and clearly
on a missing or damaged checkpoint, since every dissection of the scene world measures with it."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import checkpoint
from jaxdissect.sceneworld import CONCEPT_INDEX, CONCEPTS, render
from jaxdissect.sceneworld import segmenter as seg


@pytest.fixture(scope="module")
def segmenter():
  return seg.load_segmenter()


@pytest.fixture(scope="module")
def images():
  return render(4, seed=5)[0]


@pytest.fixture(scope="module")
def probs(segmenter, images):
  return np.asarray(jax.jit(segmenter.segment_fn)(segmenter.params, images))


def test_reproduces_recorded_mean_iou(segmenter):
  with open(seg.EVAL_PATH) as f:
    recorded = json.load(f)
  iou, miou = seg.mean_iou(segmenter, recorded["fast_eval_n"], recorded["eval_seed"],
                           batch_size=recorded["fast_eval_n"])
  assert iou.shape == (len(CONCEPTS),)
  assert abs(miou - recorded["fast_mean_iou"]) < 0.01
  assert recorded["mean_iou"] >= 0.90 and min(recorded["iou"].values()) >= 0.80


def test_probabilities_are_soft_and_normalised(probs):
  assert probs.shape == (4, 64, 64, len(CONCEPTS))
  assert probs.min() >= 0 and probs.max() <= 1
  np.testing.assert_allclose(probs[..., 1:9].sum(-1), 1, atol=1e-5)           # objects
  np.testing.assert_allclose(probs[..., [0, 9, 10, 11, 12]].sum(-1), 1, atol=1e-5)  # parts


def test_probabilities_are_differentiable(segmenter, images):
  window = CONCEPT_INDEX["window"]
  grad = jax.jit(jax.grad(
      lambda x: jnp.sum(segmenter.segment_fn(segmenter.params, x)[..., window])))(images)
  assert grad.shape == images.shape
  assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


def test_labels_are_valid_and_agree_with_probabilities(segmenter, images, probs):
  labels = np.asarray(jax.jit(segmenter.label_fn)(segmenter.params, images))
  assert labels.shape == (4, 64, 64, 2) and labels.dtype == np.int32
  assert set(np.unique(labels[..., 0])) <= set(range(1, 9))
  assert set(np.unique(labels[..., 1])) <= {0, 9, 10, 11, 12}
  np.testing.assert_array_equal(labels[..., 0], probs[..., 1:9].argmax(-1) + 1)
  assert segmenter.concepts == CONCEPTS


def test_features_are_pooled_vectors(segmenter, images):
  feats = np.asarray(seg.features_fn(segmenter.params, images))
  assert feats.shape == (4, seg.WIDTHS[-1]) and np.all(np.isfinite(feats))


def test_bad_image_shape_is_named(segmenter):
  with pytest.raises(ValueError, match=r"\[2, 60, 60, 3\]"):
    segmenter.segment_fn(segmenter.params, jnp.zeros((2, 60, 60, 3)))


def test_missing_checkpoint_names_path_and_command(tmp_path):
  path = str(tmp_path / "nowhere")
  with pytest.raises(checkpoint.CheckpointError) as err:
    seg.load_segmenter(path)
  assert path in str(err.value)
  assert "python -m experiments.train_scene_segmenter" in str(err.value)


def test_corrupt_checkpoint_is_reported(tmp_path):
  path = str(tmp_path / "segmenter")
  shutil.copytree(seg.DEFAULT_PATH, path)
  for root, _, files in os.walk(path):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  with pytest.raises(checkpoint.CheckpointError, match="train_scene_segmenter"):
    seg.load_segmenter(path)
