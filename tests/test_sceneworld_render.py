"""The scene world: labels are exact, obey the scene grammar, and each image depends only on
(seed, index), so the segmenter and GAN trained on it, and the context experiments run in it,
can trust them."""

import numpy as np
import pytest

from jaxdissect import sceneworld as sw

IDX = sw.CONCEPT_INDEX
OBJECTS = ("sky", "cloud", "mountain", "grass", "tree", "building", "road", "water")
PART_OF = {"roof": "building", "window": "building", "door": "building", "trunk": "tree"}
BUILDING_SLOTS = [i for i, name in enumerate(sw.LAYERS) if name == "building"]


@pytest.fixture(scope="module")
def scenes():
  """200 scenes with their layout."""
  return sw.render_with_layout(200, seed=3)


@pytest.fixture(scope="module")
def sample():
  """500 scenes for frequencies and colours."""
  return sw.render(500, seed=11)


def _rows(shape):
  """Row index of every pixel of `[n, H, W]`."""
  return np.broadcast_to(np.arange(shape[1])[None, :, None], shape)


def test_concept_table_is_stable():
  names = [name for name, _ in sw.CONCEPTS]
  assert names[:13] == ["-", "sky", "cloud", "mountain", "grass", "tree", "building", "road",
                        "water", "roof", "window", "door", "trunk"]
  assert sw.CONCEPTS[0] == ("-", "-")
  assert all(sw.CONCEPTS[IDX[o]][1] == "object" for o in OBJECTS)
  assert all(sw.CONCEPTS[IDX[p]][1] == "part" for p in PART_OF)
  assert all(IDX[name] == i for i, (name, _) in enumerate(sw.CONCEPTS))


@pytest.mark.parametrize("size", [64, 32])
def test_shapes_dtypes_and_range(size):
  images, labels = sw.render(5, seed=0, size=size)
  assert images.shape == (5, size, size, 3) and images.dtype == np.float32
  assert labels.shape == (5, size, size, 2) and labels.dtype == np.int32
  assert images.min() >= -1 and images.max() <= 1
  assert images.std() > 0.1
  empty_images, empty_labels = sw.render(0, seed=0)
  assert empty_images.shape == (0, 64, 64, 3) and empty_labels.shape == (0, 64, 64, 2)


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="n is -1"):
    sw.render(-1, seed=0)
  with pytest.raises(ValueError, match="seed is -2"):
    sw.render(1, seed=-2)


def test_deterministic_prefix_stable_and_batch_independent():
  images, labels = sw.render(133, seed=7)          # crosses an internal chunk boundary
  again_images, again_labels = sw.render(133, seed=7)
  np.testing.assert_array_equal(images, again_images)
  np.testing.assert_array_equal(labels, again_labels)
  for k in (0, 5, 127, 128, 132):
    one_image, one_label = sw.render(1, seed=7, start=k)
    np.testing.assert_array_equal(one_image[0], images[k])
    np.testing.assert_array_equal(one_label[0], labels[k])
  mid_images, mid_labels = sw.render(10, seed=7, start=123)
  np.testing.assert_array_equal(mid_images, images[123:])
  np.testing.assert_array_equal(mid_labels, labels[123:])
  prefix_images, _ = sw.render(10, seed=7)
  np.testing.assert_array_equal(prefix_images, images[:10])


def test_seeds_and_indices_differ():
  a, _ = sw.render(8, seed=0)
  b, _ = sw.render(8, seed=1)
  assert all(np.abs(a[i] - b[i]).mean() > 0.02 for i in range(8))
  assert all(np.abs(a[i] - a[i + 1]).mean() > 0.02 for i in range(7))


def test_render_with_layout_matches_render(scenes):
  images, labels, layout = scenes
  plain_images, plain_labels = sw.render(200, seed=3)
  np.testing.assert_array_equal(images, plain_images)
  np.testing.assert_array_equal(labels, plain_labels)
  layer_concept = np.array([IDX[name] for name in sw.LAYERS])
  np.testing.assert_array_equal(labels[..., 0], layer_concept[layout.instance])
  assert layout.boxes.shape == (200, len(sw.LAYERS), 4)
  assert layout.walls.shape == layout.doors.shape == (200, len(BUILDING_SLOTS), 4)


def test_every_pixel_has_one_object_and_parts_sit_on_their_object(scenes):
  _, labels, _ = scenes
  objects, parts = labels[..., 0], labels[..., 1]
  assert np.isin(objects, [IDX[o] for o in OBJECTS]).all()
  assert np.isin(parts, [0] + [IDX[p] for p in PART_OF]).all()
  for part, owner in PART_OF.items():
    on = parts == IDX[part]
    assert on.any(), part
    assert (objects[on] == IDX[owner]).all(), f"{part} pixel off its {owner}"


def test_sky_things_above_and_ground_things_below_the_horizon(scenes):
  _, labels, layout = scenes
  objects = labels[..., 0]
  rows = _rows(objects.shape)
  horizon = layout.horizon[:, None, None]
  size = objects.shape[1]
  assert ((layout.horizon >= 0.33 * size) & (layout.horizon <= 0.62 * size)).all()
  clouds = objects == IDX["cloud"]
  assert clouds.any()
  assert (rows[clouds] <= (horizon - 2)[np.nonzero(clouds)[0], 0, 0]).all(), (
      "a cloud touches or crosses the horizon")
  for name in ("sky", "mountain"):
    mask = objects == IDX[name]
    assert (rows < horizon)[mask].all(), f"{name} below the horizon"
  for name in ("grass", "road", "water"):
    mask = objects == IDX[name]
    assert mask.any() and (rows >= horizon)[mask].all(), f"{name} above the horizon"
  # Mountains stand on the horizon: their drawn shape reaches its last sky row.
  for slot in (i for i, name in enumerate(sw.LAYERS) if name == "mountain"):
    on = layout.present[:, slot]
    assert on.any()
    np.testing.assert_array_equal(layout.boxes[on, slot, 2], layout.horizon[on])


def test_buildings_and_trees_stand_on_the_ground(scenes):
  _, _, layout = scenes
  for slot, name in enumerate(sw.LAYERS):
    if name in ("building", "tree"):
      on = layout.present[:, slot]
      assert on.any()
      assert (layout.boxes[on, slot, 2] > layout.horizon[on] + 1).all(), name
  built = layout.walls[..., 2] > 0
  assert (layout.walls[..., 2] > layout.horizon[:, None] + 1)[built].all()


def test_doors_stand_on_the_base_of_their_wall(scenes):
  _, labels, layout = scenes
  n, size = labels.shape[:2]
  door = labels[..., 1] == IDX["door"]
  assert door.any()
  has_door = layout.doors[..., 2] > 0
  np.testing.assert_array_equal(layout.doors[..., 2][has_door], layout.walls[..., 2][has_door])
  touching = 0
  for i, y, x in zip(*np.nonzero(door)):
    slot = layout.instance[i, y, x]
    assert slot in BUILDING_SLOTS
    b = BUILDING_SLOTS.index(slot)
    top, x0, bottom, x1 = layout.doors[i, b]
    assert top <= y < bottom and x0 <= x < x1, "door pixel outside its door"
    # Walk down the door: it ends on the wall's base row unless something nearer covers it.
    end = y
    while end + 1 < size and door[i, end + 1, x] and layout.instance[i, end + 1, x] == slot:
      end += 1
    base = layout.walls[i, b, 2] - 1
    if end == base:
      touching += 1
    else:
      assert end < base and layout.instance[i, end + 1, x] != slot, (
          f"image {i}: door column {x} stops at row {end}, above its wall's base row {base}")
  assert touching > 0.5 * door.sum()


def test_windows_on_walls_and_roofs_above_them(scenes):
  _, labels, layout = scenes
  for part in ("window", "roof"):
    mask = labels[..., 1] == IDX[part]
    assert mask.any()
    i, y, x = np.nonzero(mask)
    slot = layout.instance[i, y, x]
    assert np.isin(slot, BUILDING_SLOTS).all()
    top, x0, bottom, x1 = np.moveaxis(layout.walls[i, np.searchsorted(BUILDING_SLOTS, slot)], 1, 0)
    if part == "window":
      assert ((y >= top) & (y < bottom - 1) & (x >= x0) & (x < x1)).all(), "window off the wall"
    else:
      assert (y < top).all(), "roof pixel not above its wall"


def test_trunks_are_tree_pixels_under_their_canopy(scenes):
  _, labels, layout = scenes
  trunk = labels[..., 1] == IDX["trunk"]
  i, y, x = np.nonzero(trunk)
  slot = layout.instance[i, y, x]
  assert all(sw.LAYERS[s] == "tree" for s in np.unique(slot))
  # The canopy sits on top of the trunk: the trunk's box is the bottom of the tree's box.
  assert (y < layout.boxes[i, slot, 2]).all() and (y > layout.boxes[i, slot, 0]).all()


def test_every_concept_is_common_enough(sample):
  _, labels = sample
  present = np.stack([sw.concept_fractions(lab) > 0 for lab in labels])   # [n, K]
  frequency = present.mean(axis=0)
  for k, (name, _) in enumerate(sw.CONCEPTS[1:], start=1):
    assert frequency[k] >= 0.1, f"{name} appears in only {frequency[k]:.1%} of images"


def test_colours_match_labels(sample):
  images, labels = sample
  rgb = (images + 1) / 2

  def mean(channel, name):
    return rgb[labels[..., channel] == IDX[name]].mean(axis=0)

  sky, grass, water = mean(0, "sky"), mean(0, "grass"), mean(0, "water")
  assert sky[2] > sky[0] + 0.2 and sky[2] > sky[1] + 0.1, sky
  assert grass[1] > grass[0] + 0.1 and grass[1] > grass[2] + 0.2, grass
  assert water[2] > water[0] + 0.3 and water[2] > water[1] + 0.15, water
  assert mean(0, "cloud").min() > 0.75
  road = mean(0, "road")
  assert road.max() - road.min() < 0.08 and road.max() < 0.5, road
  tree, trunk = mean(0, "tree"), mean(1, "trunk")
  assert tree[1] > tree[2] + 0.1 and trunk[0] > trunk[2] + 0.1
  # Nearly every sky pixel is bluer than it is red, every grass pixel greener than blue.
  sky_px = rgb[labels[..., 0] == IDX["sky"]]
  grass_px = rgb[labels[..., 0] == IDX["grass"]]
  assert np.mean(sky_px[:, 2] > sky_px[:, 0]) > 0.95
  assert np.mean(grass_px[:, 1] > grass_px[:, 2]) > 0.99


def test_concept_fractions_counts_any_channel():
  labels = np.zeros((1, 2, 2, 2), np.int32)
  labels[0, :, :, 0] = [[1, 6], [6, 5]]
  labels[0, 0, 1, 1] = 10
  fractions = sw.concept_fractions(labels)
  assert fractions.shape == (len(sw.CONCEPTS),)
  np.testing.assert_allclose(fractions[[0, 1, 5, 6, 10]], [0, 0.25, 0.25, 0.5, 0.25])


def test_colorize_and_grid():
  images, labels = sw.render(3, seed=0)
  assert sw.label_palette().shape == (len(sw.CONCEPTS), 3)
  view = sw.colorize(labels)
  assert view.shape == (3, 64, 64, 3) and view.dtype == np.uint8
  door = labels[..., 1] == IDX["door"]
  assert (view[door] == sw.label_palette()[IDX["door"]]).all()
  grid = sw.sample_grid(images, labels, columns=2)
  assert grid.dtype == np.uint8 and grid.shape == (2 + 2 * 66, 2 + 2 * 130, 3)
