"""The scene classes as a lazy labelled dataset: rows are the renderer's scenes and exact labels
whatever way they are indexed, and `--images sceneworld_scenes` names them."""

import numpy as np
import pytest

from experiments import image_sets
from experiments.cli import UsageError
from jaxdissect import imagesource
from jaxdissect.sceneworld import CONCEPTS, sceneset
from jaxdissect.sceneworld.scenes import render_scenes

SEED, SIZE = 7, 32


@pytest.fixture(scope="module")
def rendered():
  images, labels, _ = render_scenes(12, SEED, SIZE)
  return np.concatenate([images, labels.astype(np.float32)], axis=-1)


def test_rows_are_the_rendered_scenes_however_indexed(rendered):
  rows = sceneset.SceneImages(12, SEED, SIZE)
  assert rows.shape == (12, SIZE, SIZE, 5) and len(rows) == 12 and rows.dtype == np.float32
  np.testing.assert_array_equal(rows[:], rendered)
  np.testing.assert_array_equal(rows[3:9], rendered[3:9])
  np.testing.assert_array_equal(rows[5], rendered[5])
  np.testing.assert_array_equal(rows[-1], rendered[-1])
  picks = np.array([9, 2, 3, 4, 2, 11])  # unordered, repeated, with a consecutive run
  np.testing.assert_array_equal(rows[picks], rendered[picks])
  np.testing.assert_array_equal(rows[[]], rendered[:0])
  assert rows.record() == {"reader": "sceneworld.render_scenes", "seed": SEED, "count": 12,
                           "shape": [SIZE, SIZE, 5], "lighting": True}
  with pytest.raises(IndexError, match="scene 12 is out of range for 12 scenes"):
    rows[np.array([0, 12])]
  with pytest.raises(ValueError, match="count is 0"):
    sceneset.SceneImages(0, SEED)
  with pytest.raises(ValueError, match="seed is -1"):
    sceneset.SceneImages(5, -1)


def test_the_exact_label_segmenter_reads_the_renderer_labels(rendered):
  images, labels, _ = render_scenes(4, SEED, SIZE)
  image_set = sceneset.scene_image_set(12, SEED, SIZE)
  assert image_set.concepts == CONCEPTS and image_set.label_depth == 2
  seg = imagesource.exact_labels_segmenter(image_set.concepts, image_set.label_depth)
  np.testing.assert_array_equal(np.asarray(seg.label_fn(seg.params, image_set.images[:4])),
                                labels)
  np.testing.assert_array_equal(image_set.images[:4][..., :3], images)


def test_images_flag_names_the_held_out_scenes():
  image_set = image_sets.load("sceneworld_scenes", (64, 64))
  rows = image_set.images
  assert (rows.count, rows.seed, rows.size) == (2000, 999, 64)
  assert image_sets.load("sceneworld_scenes", (32, 32)).images.shape == (2000, 32, 32, 5)
  with pytest.raises(UsageError, match="square scenes.*takes 64x48"):
    image_sets.load("sceneworld_scenes", (64, 48))
