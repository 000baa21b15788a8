"""Unified-parsing segmenter port (`ports.upp`): golden parity with the original netdissect code,
Precise RoI pooling against numerical integration, the quad split on planted maps, the part-to-owner
mapping, the label numbering and the converter's key checks.

`tests/data/upp_golden.npz` was produced by running the original `UnifiedParsingSegmenter`
(CSAILVision/gandissect, and davidbau/dissect for `all_parts`) on random weights; see
`tests/data/upp_golden.md`. Its 4-D conv weights are not stored: they are regenerated here from
the recorded seed (one numpy `RandomState` per key, checked against stored checksums); every other
tensor (BatchNorm parameters and statistics, biases) is stored as float32. No torch is needed,
except for the `.pth` round trip, which skips without it.
"""

import json
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect.model import Segmenter
from ports import upp

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "upp_golden.npz")
PROB_TOL = 1e-4
TIE_TOL = 1e-4


# --- Golden file ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def golden():
  with np.load(GOLDEN) as z:
    return {k: z[k] for k in z.files}


def _json(golden, key):
  return json.loads(str(golden[key]))


def _conv_weight(seed, part, key, shape):
  """The golden script's conv weight of `key`: U(-b, b), b = sqrt(6 / fan_in), from a legacy
  numpy RandomState seeded with (seed, crc32 of 'encoder/<key>' or 'decoder/<key>')."""
  rs = np.random.RandomState([seed, zlib.crc32(f"{part}/{key}".encode())])
  bound = np.sqrt(6.0 / np.prod(shape[1:]))
  return ((rs.random_sample(shape) * 2.0 - 1.0) * bound).astype(np.float32)


@pytest.fixture(scope="module")
def state_dicts(golden):
  """The original's encoder and decoder state dicts, as numpy arrays, rebuilt from the golden."""
  meta = _json(golden, "meta_json")
  sds, sums = {}, []
  for part in ("encoder", "decoder"):
    sd = {}
    for key, shape in meta["conv_keys"][part]:
      sd[key] = _conv_weight(meta["seed"], part, key, tuple(shape))
      sums.append([sd[key].sum(dtype=np.float64), np.abs(sd[key]).sum(dtype=np.float64)])
    for key in meta["other_keys"][part]:
      sd[key] = golden[f"sd/{part}/{key}"]
    sds[part] = sd
  np.testing.assert_allclose(sums, golden["conv_checksums"], rtol=1e-9)
  return sds


@pytest.fixture(scope="module")
def labels(golden):
  return _json(golden, "labels_json")


@pytest.fixture(scope="module")
def params(state_dicts, labels):
  return jax.tree.map(jnp.asarray, upp.convert(state_dicts["encoder"], state_dicts["decoder"],
                                               labels))


@pytest.fixture(scope="module")
def pred64(params, labels, golden):
  space = upp.label_space(labels, quad=True)
  return upp.predict(params, jnp.asarray(golden["images"]), space, segsizes=(64,), downsample=2)


def _top_gap(p):
  s = np.sort(np.asarray(p), -1)
  return s[..., -1] - s[..., -2]


def _ties(golden, prefix, space):
  """Pixels where the golden's own top-2 object, material or used-part probabilities tie."""
  ties = (_top_gap(golden[f"{prefix}/object"]) < TIE_TOL) | (
      _top_gap(golden[f"{prefix}/material"]) < TIE_TOL)
  for owner in space.owners:
    key = f"{prefix}/part/{owner.slice}"
    if key in golden and golden[key].shape[-1] > 1:
      ties |= _top_gap(golden[key]) < TIE_TOL
  assert ties.sum() <= 4
  return ties


def _assert_labels_match(ours, want, ties):
  """Labels equal except at pixels where the golden's probabilities tie within 1e-4 (one pixel
  of 2048 in A and in B; at present the labels there agree too)."""
  ours = np.asarray(ours)
  assert ours.shape == want.shape and ours.dtype == np.int32
  differ = np.any(ours != want, axis=-1)
  assert not np.any(differ & ~ties), f"{int(np.sum(differ & ~ties))} labelled pixels differ"


def _assert_prediction_close(pred, golden, prefix, slices):
  np.testing.assert_allclose(pred.object, golden[f"{prefix}/object"], atol=PROB_TOL, rtol=0)
  np.testing.assert_allclose(pred.material, golden[f"{prefix}/material"], atol=PROB_TOL, rtol=0)
  for k in slices:
    np.testing.assert_allclose(pred.parts[k], golden[f"{prefix}/part/{k}"], atol=PROB_TOL, rtol=0)


def test_golden_single_scale(golden, labels, pred64):
  """segsizes [64], downsample 2: probabilities, quad labels (quirk on) and concepts."""
  space = upp.label_space(labels, quad=True)
  _assert_prediction_close(pred64, golden, "A", range(3))
  assert space.concepts == tuple(map(tuple, _json(golden, "A/concepts")))
  ties = _ties(golden, "A", space)
  ours = upp.labels_from_prediction(pred64, space, original_quad_quirk=True)
  _assert_labels_match(ours, golden["A/labels"], ties)


def test_golden_without_quad_and_with_all_parts(golden, labels, pred64):
  """The same network output labelled as the original's `segdiv=None` and P's `all_parts`."""
  plain = upp.label_space(labels, quad=False)
  assert plain.concepts == tuple(map(tuple, _json(golden, "A_noquad/concepts")))
  ties = _ties(golden, "A", plain)
  _assert_labels_match(upp.labels_from_prediction(pred64, plain), golden["A_noquad/labels"], ties)

  every = upp.label_space(labels, quad=True, all_parts=True)
  assert every.concepts == tuple(map(tuple, _json(golden, "P/concepts")))
  for k in range(len(every.part_slices)):
    np.testing.assert_allclose(pred64.parts[k], golden[f"P/part/{k}"], atol=PROB_TOL, rtol=0)
  ours = upp.labels_from_prediction(pred64, every, original_quad_quirk=True)
  _assert_labels_match(ours, golden["P/labels"], _ties(golden, "A", every))


def test_sane_quad_differs_from_original_only_on_last_components(golden, labels, pred64):
  space = upp.label_space(labels, quad=True)
  sane = np.asarray(upp.labels_from_prediction(pred64, space))
  want = golden["A/labels"]
  np.testing.assert_array_equal(sane[..., :3], want[..., :3])
  for b in range(want.shape[0]):
    ids = _components_by_flood_fill(want[b, ..., 0])
    last = ids == ids[want[b, ..., 0] > 0].max()
    assert last.any()
    np.testing.assert_array_equal(sane[b][~last], want[b][~last])
    assert np.all(want[b][last][:, 3:] == 0) and np.all(sane[b][last][:, 3:] > 0)


def test_golden_multi_scale(golden, labels, params):
  """segsizes [48, 64]: adaptive pooling of the input and the sum over scales."""
  space = upp.label_space(labels, quad=True)
  pred = upp.predict(params, jnp.asarray(golden["images"]), space, segsizes=(48, 64),
                     downsample=2)
  _assert_prediction_close(pred, golden, "B", range(3))
  ours = upp.labels_from_prediction(pred, space, original_quad_quirk=True)
  _assert_labels_match(ours, golden["B/labels"], _ties(golden, "B", space))


def _expected_soft(golden, space, quads):
  """The documented soft output, from the golden's probabilities, label by label."""
  obj, mat = golden["A/object"], golden["A/material"]
  n, k = space.num_objects, len(space.concepts)
  out = np.zeros(obj.shape[:-1] + (k,), np.float64)
  out[..., 1:n + 1] = obj[..., 1:]
  off = space.material_offset
  out[..., off + 1:off + 1 + space.num_materials] = mat[..., 1:]
  for owner in space.owners:
    parts = golden[f"A/part/{owner.slice}"]
    for j, label in enumerate(owner.part_labels):
      if label:
        out[..., label] += obj[..., owner.label] * parts[..., j]
  top = obj.argmax(-1)
  p_top = np.take_along_axis(obj, top[..., None], -1)[..., 0]
  for c in range(2):
    for b, y, x in zip(*np.nonzero(quads[..., c])):
      out[b, y, x, quads[b, y, x, c]] += p_top[b, y, x]
  return out


def test_segmenter_protocol(golden, labels, params):
  seg = upp.make_segmenter(params, labels, segsizes=(64,), original_quad_quirk=True)
  assert isinstance(seg, Segmenter)
  images = jnp.asarray(golden["images"])
  labels_out = seg.label_fn(seg.params, images)
  np.testing.assert_array_equal(labels_out, golden["A/labels"])
  probs = np.asarray(seg.segment_fn(seg.params, images))
  space = upp.label_space(labels, quad=True)
  assert probs.shape == (2, 32, 32, len(seg.concepts))
  assert probs.min() >= 0 and probs.max() <= 1 + 1e-6
  want = _expected_soft(golden, space, golden["A/labels"][..., 3:])
  np.testing.assert_allclose(probs, want, atol=PROB_TOL, rtol=0)
  # every quad label the hard labelling gives carries its object's probability
  quad_cols = probs[..., space.num_objects + 1:space.material_offset + 1]
  assert np.all((quad_cols > 0).sum(-1) <= 2)


def test_soft_output_is_differentiable(golden, labels, pred64):
  space = upp.label_space(labels, quad=True)
  quads = upp.quad_split(jnp.argmax(pred64.object, -1).astype(jnp.int32), space.num_objects,
                         original_quad_quirk=True)

  def window_score(pred):  # label 8: the object 'window' and the building part 'window'
    return jnp.sum(upp.probabilities_from_prediction(pred, space, 1, quads)[..., 8])

  grads = jax.grad(window_score)(pred64)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert np.abs(grads.object[..., 8]).sum() > 0 and np.abs(grads.object[..., 5]).sum() > 0
  assert np.abs(grads.parts[1]).sum() > 0  # building (object 5) owns decoder part slice 1


# --- Precise RoI pooling --------------------------------------------------------------------------

def _bilinear_zero_outside(f, ys, xs):
  """The bilinear surface through `f[h, w, c]` (samples at integer coords, zero outside) at the
  grid `ys x xs`, by zero padding and floor / fraction weights."""
  h, w = f.shape[:2]
  pad = np.zeros((h + 3, w + 3) + f.shape[2:])
  pad[1:h + 1, 1:w + 1] = f
  y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
  fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
  y0, x0 = y0[:, None] + 1, x0[None, :] + 1
  return (pad[y0, x0] * (1 - fy) * (1 - fx) + pad[y0, x0 + 1] * (1 - fy) * fx
          + pad[y0 + 1, x0] * fy * (1 - fx) + pad[y0 + 1, x0 + 1] * fy * fx)


def _prroi_by_sampling(f, bins, samples=160):
  """Bin means of the surface by the midpoint rule on a grid aligned with the bin edges."""
  h, w = f.shape[:2]
  (sh, sw), (bh, bw) = (samples, samples), bins
  ys = (np.arange(bh * sh) + 0.5) * h / (bh * sh)
  xs = (np.arange(bw * sw) + 0.5) * w / (bw * sw)
  surface = _bilinear_zero_outside(f, ys, xs)
  return surface.reshape(bh, sh, bw, sw, -1).mean(axis=(1, 3))


@pytest.mark.parametrize("hw,bins", [((5, 7), (3, 2)), ((2, 2), (6, 6)), ((1, 1), (1, 1)),
                                     ((3, 3), (3, 3)), ((7, 4), (6, 6)), ((9, 11), (2, 3)),
                                     ((2, 3), (1, 1))])
def test_prroi_pool_matches_numerical_integration(hw, bins):
  f = np.random.default_rng(hw[0] * 31 + bins[0]).normal(size=hw + (3,))
  ours = np.asarray(upp.prroi_pool(jnp.asarray(f[None], jnp.float32), bins))[0]
  np.testing.assert_allclose(ours, _prroi_by_sampling(f, bins), atol=2e-4, rtol=0)


def test_prroi_pool_hand_values():
  """A constant map: bins reaching past the last sample see the surface fall to zero."""
  ones = jnp.ones((1, 2, 2, 1))
  # one bin over [0, 2]^2: per axis mean of the profile (1 on [0, 1], 2 - t on [1, 2]) = 3/4
  np.testing.assert_allclose(upp.prroi_pool(ones, (1, 1)), 0.75 ** 2, rtol=1e-6)
  # two bins per axis: [0, 1] has mean 1, [1, 2] has mean 1/2
  want = np.outer([1.0, 0.5], [1.0, 0.5])[None, :, :, None]
  np.testing.assert_allclose(upp.prroi_pool(ones, (2, 2)), want, rtol=1e-6)
  # PrRoI is not adaptive average pooling: rows [1, 3] give 0.75 (rows) * (2 + 1.5) / 2, not 2
  ramp = jnp.asarray([[1.0, 3.0], [1.0, 3.0]]).reshape(1, 2, 2, 1)
  np.testing.assert_allclose(upp.prroi_pool(ramp, (1, 1)), [[[[0.75 * 1.75]]]], rtol=1e-6)


# --- Connected components and the quad split ------------------------------------------------------

PLANTED = np.array([
    [1, 1, 0, 0, 2, 2, 2, 0],
    [1, 1, 0, 0, 0, 0, 2, 0],
    [0, 0, 1, 0, 0, 0, 2, 0],
    [0, 0, 0, 0, 3, 3, 0, 0],
    [2, 0, 0, 0, 3, 3, 0, 1],
    [2, 2, 0, 0, 0, 0, 0, 1],
])
# By hand, N = 3. Components (8-connected, same label), by first pixel in raster order:
#   A label 1 {(0,0),(0,1),(1,0),(1,1),(2,2)}: rows 0..2 -> vmid 1, cols 0..2 -> hmid 1
#   B label 2 {(0,4),(0,5),(0,6),(1,6),(2,6)}: vmid 1, cols 4..6 -> hmid 5
#   C label 3 {(3,4),(3,5),(4,4),(4,5)} (touches B diagonally, other label): vmid 4, hmid 5
#   D label 2 {(4,0),(5,0),(5,1)}: vmid 5, hmid 1
#   E label 1 {(4,7),(5,7)}: vmid 5, hmid 7 (a one-column box is all 'r'); the last component
# channel 3: l + 3 above vmid ('t'), l + 9 from vmid down ('b')
PLANTED_T_B = np.array([
    [4, 4, 0, 0, 5, 5, 5, 0],
    [10, 10, 0, 0, 0, 0, 11, 0],
    [0, 0, 10, 0, 0, 0, 11, 0],
    [0, 0, 0, 0, 6, 6, 0, 0],
    [5, 0, 0, 0, 12, 12, 0, 4],
    [11, 11, 0, 0, 0, 0, 0, 10],
])
# channel 4: l + 6 left of hmid ('l'), l + 12 from hmid right ('r')
PLANTED_L_R = np.array([
    [7, 13, 0, 0, 8, 14, 14, 0],
    [7, 13, 0, 0, 0, 0, 14, 0],
    [0, 0, 13, 0, 0, 0, 14, 0],
    [0, 0, 0, 0, 9, 15, 0, 0],
    [8, 0, 0, 0, 9, 15, 0, 13],
    [8, 14, 0, 0, 0, 0, 0, 13],
])


def test_quad_split_planted_maps():
  # image 1: one 2 x 3 block of label 2 (N = 3): vmid 2, hmid 2; image 2 is empty
  block = np.zeros_like(PLANTED)
  block[1:3, 1:4] = 2
  objects = jnp.asarray(np.stack([PLANTED, block, np.zeros_like(PLANTED)]))
  sane = np.asarray(upp.quad_split(objects, 3))
  np.testing.assert_array_equal(sane[0, ..., 0], PLANTED_T_B)
  np.testing.assert_array_equal(sane[0, ..., 1], PLANTED_L_R)
  np.testing.assert_array_equal(sane[1, 1:3, 1:4, 0], [[5, 5, 5], [11, 11, 11]])
  np.testing.assert_array_equal(sane[1, 1:3, 1:4, 1], [[8, 14, 14], [8, 14, 14]])
  assert np.count_nonzero(sane[1]) == 12 and not sane[2].any()
  quirk = np.asarray(upp.quad_split(objects, 3, original_quad_quirk=True))
  last = np.zeros_like(PLANTED, bool)
  last[4:, 7] = True  # component E
  np.testing.assert_array_equal(quirk[0][~last], sane[0][~last])
  assert not quirk[0][last].any()
  assert not quirk[1].any()  # with one component the original splits nothing


def _components_by_flood_fill(labels):
  """Component ids (first raster index, h*w for background) by breadth-first flood fill."""
  h, w = labels.shape
  ids = np.full((h, w), h * w)
  for start in range(h * w):
    y, x = divmod(start, w)
    if labels[y, x] == 0 or ids[y, x] != h * w:
      continue
    ids[y, x], queue = start, [(y, x)]
    while queue:
      cy, cx = queue.pop()
      for ny in range(max(cy - 1, 0), min(cy + 2, h)):
        for nx in range(max(cx - 1, 0), min(cx + 2, w)):
          if labels[ny, nx] == labels[y, x] and ids[ny, nx] == h * w:
            ids[ny, nx] = start
            queue.append((ny, nx))
  return ids


def test_connected_components_match_flood_fill():
  rng = np.random.default_rng(0)
  maps = [rng.integers(0, 3, (9, 11)) for _ in range(3)]
  snake = np.zeros((9, 11), int)  # one long path: many propagation steps
  snake[::2, :] = 1
  snake[1::4, -1] = 1
  snake[3::4, 0] = 1
  maps.append(snake)
  ids = np.asarray(upp.connected_components(jnp.asarray(np.stack(maps))))
  for got, labels in zip(ids, maps):
    np.testing.assert_array_equal(got, _components_by_flood_fill(labels))
  assert len(np.unique(ids[-1])) == 2  # the snake is one component plus background


# --- Label numbering and part owners --------------------------------------------------------------

SYNTH = {
    "object": ["-", "person", "car", "sky", "building", "door"],
    "material": ["-", "wood", "glass"],
    # json order differs from object order; the decoder's part slices follow object order:
    # person (slice 0), car (1), sky (2), building (3)
    "object_part": {"building": ["-", "door", "roof"], "car": ["-", "wheel", "door"],
                    "sky": ["-", "cloud"], "person": ["-", "head", "leg"]},
}
# Per pixel (1 x 2 x 4): object argmax, material argmax, and the argmax within each owner's slice.
SYNTH_OBJECTS = [[1, 2, 3, 4], [4, 0, 1, 5]]
SYNTH_MATERIALS = [[0, 1, 2, 0], [1, 1, 0, 2]]
SYNTH_PART_ARGMAX = {0: [[1, 1, 1, 1], [1, 1, 2, 1]], 1: [[1, 1, 1, 1], [1, 1, 1, 1]],
                     2: [[1, 1, 1, 1], [1, 1, 1, 1]], 3: [[2, 2, 2, 1], [2, 2, 2, 2]]}


def _synthetic_prediction():
  def peaked(arg, n):
    return jnp.asarray(0.1 + np.eye(n)[np.asarray(arg)][None], jnp.float32)

  sizes = {0: 3, 1: 3, 2: 2, 3: 3}
  return upp.Prediction(peaked(SYNTH_OBJECTS, 6), peaked(SYNTH_MATERIALS, 3),
                        tuple(peaked(SYNTH_PART_ARGMAX[k], sizes[k]) for k in range(4)))


def test_concepts_numbering():
  space = upp.label_space(SYNTH, quad=True)
  names = [c[0] for c in space.concepts]
  assert names[:6] == ["-", "person", "car", "sky", "building", "door"]
  assert names[6:11] == ["person-t", "car-t", "sky-t", "building-t", "door-t"]
  assert names[11] == "person-l" and names[16] == "person-b" and names[21] == "person-r"
  # materials at 5N + 1; parts of sky, building, person (that order) from 5N + 1 + M = 28
  assert space.concepts[26:] == (("wood", "material"), ("glass", "material"), ("cloud", "part"),
                                 ("roof", "part"), ("head", "part"), ("leg", "part"))
  assert {c for _, c in space.concepts[6:26]} == {"part"}
  plain = upp.label_space(SYNTH, quad=False)
  assert [c[0] for c in plain.concepts[6:]] == ["wood", "glass", "cloud", "roof", "head", "leg"]
  every = upp.label_space(SYNTH, quad=True, all_parts=True)
  # all owners, json order: building (door = object 5, roof), car (wheel), sky, person
  assert [c[0] for c in every.concepts[28:]] == ["roof", "wheel", "cloud", "head", "leg"]


def test_part_labels_follow_their_owner_slice():
  pred = _synthetic_prediction()
  space = upp.label_space(SYNTH, quad=False)
  got = np.asarray(upp.labels_from_prediction(pred, space))[0]
  np.testing.assert_array_equal(got[..., 0], SYNTH_OBJECTS)
  np.testing.assert_array_equal(got[..., 1], [[0, 6, 7, 0], [6, 6, 0, 7]])
  # person head 10 / leg 11, car not an owner, sky cloud 8, building door -> object 5 / roof 9
  np.testing.assert_array_equal(got[..., 2], [[10, 0, 8, 5], [9, 0, 11, 0]])
  every = upp.label_space(SYNTH, quad=True, all_parts=True)
  got = np.asarray(upp.labels_from_prediction(pred, every))[0]
  np.testing.assert_array_equal(got[..., 1], [[0, 26, 27, 0], [26, 26, 0, 27]])
  # roof 28, wheel 29, cloud 30, head 31, leg 32; a car's wheel is now labelled
  np.testing.assert_array_equal(got[..., 2], [[31, 29, 30, 5], [28, 0, 32, 0]])
  assert got.shape[-1] == 5


def test_label_errors(tmp_path):
  with pytest.raises(ValueError, match="'parrot'"):
    upp.label_space(dict(SYNTH, object_part={"parrot": ["-", "beak"]}))
  no_person = {k: v for k, v in SYNTH["object_part"].items() if k != "person"}
  with pytest.raises(ValueError, match="'person'.*all_parts"):
    upp.label_space(dict(SYNTH, object_part=no_person))
  upp.label_space(dict(SYNTH, object_part=no_person), all_parts=True)
  path = tmp_path / "labels.json"
  path.write_text(json.dumps({"object": ["-", "a"], "object_part": {}}))
  with pytest.raises(ValueError, match="'material'"):
    upp.read_labels(str(path))
  path.write_text(json.dumps(SYNTH))
  assert upp.read_labels(str(path)) == SYNTH


# --- Converter ------------------------------------------------------------------------------------

def test_convert_keys(state_dicts, labels):
  enc, dec = state_dicts["encoder"], state_dicts["decoder"]
  shapes = upp.state_dict_shapes(labels)
  # the golden carries scene_head.* and num_batches_tracked, which are ignored
  assert any(k.startswith("scene_head.") for k in dec) and "scene_head.0.0.weight" not in shapes[
      "decoder"]
  assert shapes["decoder"]["object_head.1.weight"] == (11, 512, 1, 1)
  assert set(shapes["encoder"]) == {k for k in enc if not k.endswith("num_batches_tracked")}

  with pytest.raises(ValueError, match="missing.*'layer3.5.bn2.running_var'"):
    upp.convert({k: v for k, v in enc.items() if k != "layer3.5.bn2.running_var"}, dec, labels)
  with pytest.raises(ValueError, match="unexpected.*'ppm_conv.4.0.weight'"):
    upp.convert(enc, dict(dec, **{"ppm_conv.4.0.weight": np.zeros((512, 2048, 1, 1))}), labels)
  with pytest.raises(ValueError, match="'part_head.1.weight'.*shape"):
    upp.convert(enc, dict(dec, **{"part_head.1.weight": np.zeros((7, 512, 1, 1))}), labels)
  more_objects = dict(labels, object=labels["object"] + ["lamp"])
  with pytest.raises(ValueError, match="object_head.1"):
    upp.convert(enc, dec, more_objects)
  renamed = {"module." + k: v for k, v in dec.items()}
  extra = dict(enc, **{"fc.weight": np.zeros((1000, 2048)), "fc.bias": np.zeros(1000)})
  upp.convert(extra, renamed, labels)  # DataParallel prefix and an ImageNet fc are accepted


def test_make_segmenter_checks(params, labels):
  with pytest.raises(ValueError, match="heads"):
    upp.make_segmenter(params, dict(labels, material=labels["material"] + ["stone"]))
  with pytest.raises(ValueError, match="segsizes"):
    upp.make_segmenter(params, labels, segsizes=())
  seg = upp.make_segmenter(params, labels, quad=False, downsample=4)
  with pytest.raises(ValueError, match="images"):
    seg.label_fn(seg.params, jnp.zeros((1, 64, 64)))


def test_load_round_trip_through_pth(tmp_path, state_dicts, labels, params):
  torch = pytest.importorskip("torch", reason="writing .pth files needs torch")
  for part, name in (("encoder", "enc.pth"), ("decoder", "dec.pth")):
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dicts[part].items()},
               str(tmp_path / name))
  (tmp_path / "labels.json").write_text(json.dumps(labels))
  seg = upp.load(str(tmp_path), encoder_file="enc.pth", decoder_file="dec.pth", quad=False)
  assert len(seg.concepts) == 1 + 10 + 4 + 7
  same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), seg.params, params)
  assert all(jax.tree.leaves(same))
