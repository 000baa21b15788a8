"""A classifier dissected over images by the generator engine, against an independent numpy count.

The adapter (`imagesource`) makes the image the latent, so the engine's statistics, top images,
sharding and report serve classifiers unchanged. These tests check that what comes out is the
dissection of the classifier itself: IoU per unit and concept as numpy counts it on the very
images (exact labels in extra channels), top images by dataset index, the same results from a
lazy image folder as from the decoded array, and on several devices as on one.
"""

import io

import numpy as np
import pytest
from PIL import Image

from jaxdissect import colorseg, dissect, examples, imagefolder, imagesource, precision, sharding
from jaxdissect.imagefolder import ImageDataError
from jaxdissect.images import to_uint8
from jaxdissect.imagesource import ImageSet
from jaxdissect.model import Edit
from factory_models import make_classifier  # tests/ is on the path (no package)

SIZE, N = 16, 24
CONCEPTS = (("-", "none"), ("red", "colour"), ("green", "colour"), ("dark", "light"))


def _labelled_images(n=N, seed=0):
  """Smooth random images `[n, 16, 16, 3 + 2]`: colour, then two exact label channels marking
  rare colours (a few % of pixels, as a unit's top 1% would be)."""
  rng = np.random.RandomState(seed)
  coarse = rng.uniform(-0.9, 0.9, (n, 4, 4, 3))
  colour = np.repeat(np.repeat(coarse, 4, 1), 4, 2) + rng.normal(0, 0.05, (n, SIZE, SIZE, 3))
  colour = np.clip(colour, -1, 1)
  red, green = colour[..., 0] > 0.8, colour[..., 1] > 0.8
  first = np.where(red, 1, np.where(green, 2, 0))
  second = np.where(colour.mean(-1) < -0.5, 3, 0)
  return np.concatenate([colour, first[..., None], second[..., None]], -1).astype(np.float32)


def _upsample_np(a, size):
  """Bilinear, half-pixel centres, clamped borders, in float64: `[N, h, w, U] -> [N, *size, U]`."""
  def weights(n_in, n_out):
    x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(x).astype(int)
    hi, f = np.minimum(lo + 1, n_in - 1), x - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1 - f)
    np.add.at(m, (np.arange(n_out), hi), f)
    return m
  return np.einsum("yh,nhwu,xw->nyxu", weights(a.shape[1], size[0]), np.asarray(a, np.float64),
                   weights(a.shape[2], size[1]))


def _numpy_iou(up, labels, thresholds, k):
  """IoU `[U, K]` of `up > thresholds` with "some label channel is c" (column 0 left 0)."""
  on = up > thresholds
  iou = np.zeros((up.shape[-1], k))
  for c in range(1, k):
    has = (labels == c).any(-1)[..., None]
    inter, union = (on & has).sum((0, 1, 2)), (on | has).sum((0, 1, 2))
    iou[:, c] = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
  return iou


def _dissect(clf, data, mesh=None):
  gen, seg, source = imagesource.source(clf, ImageSet(data, "test", CONCEPTS))
  config = dissect.Config(("conv1", "conv2"), N, batch_size=8, warmup=N, topk=5,
                          latents=source)
  return gen, source, config, dissect.dissect(gen, seg, config, mesh=mesh)


def _numpy_counts(clf, data):
  """Upsampled activations per layer (numpy, from the classifier itself) and the labels."""
  _, acts = clf.apply_fn(clf.params, data[..., :3], capture=("conv1", "conv2"))
  ups = {layer: _upsample_np(np.asarray(a), (SIZE, SIZE)) for layer, a in acts.items()}
  return ups, np.rint(data[..., 3:]).astype(int)


@pytest.fixture(scope="module")
def labelled():
  clf, data = make_classifier(width=6, size=SIZE), _labelled_images()
  return (clf, data, *_dissect(clf, data))


def test_iou_equals_an_independent_numpy_count(labelled):
  clf, data, _, _, _, results = labelled
  ups, labels = _numpy_counts(clf, data)
  for layer, up in ups.items():
    r = results[layer]
    exact = np.quantile(up.reshape(-1, up.shape[-1]), 0.99, axis=0)  # numpy's linear rule
    want = _numpy_iou(up, labels, exact, len(CONCEPTS))
    # The one-pass IoU is the exact-quantile IoU within its bound, and the bound is tight.
    assert np.all(r.iou_bound <= 1e-3), r.iou_bound
    error = np.abs(r.iou - want).max(1)
    assert np.all(error <= r.iou_bound + 1e-6), (layer, error, r.iou_bound)
    assert np.all(r.iou[:, 0] == 0)
    ranked = np.sort(want, 1)
    clear = ranked[:, -1] - ranked[:, -2] > 2 * r.iou_bound + 1e-6  # labels no bound can swap
    assert clear.any()
    np.testing.assert_array_equal(r.label[clear], np.argmax(want, 1)[clear])
    assert want.max() > 0.04  # not vacuous: some unit is interpretable by the usual rule


def test_top_images_are_the_right_images(labelled):
  clf, data, gen, source, config, results = labelled
  _, acts = clf.apply_fn(clf.params, data[..., :3], capture=("conv2",))
  peaks = np.asarray(acts["conv2"]).max(axis=(1, 2))  # [N, U]
  r = results["conv2"]
  for u in range(peaks.shape[1]):
    np.testing.assert_array_equal(r.top_indices[u], np.argsort(-peaks[:, u], kind="stable")[:5])
    np.testing.assert_allclose(r.top_values[u], np.sort(peaks[:, u])[::-1][:5], rtol=1e-6)
  found = examples.top_examples(gen, {"conv2": r.top_indices}, source, config.batch_size)
  for u in range(peaks.shape[1]):
    want = np.asarray(to_uint8(data[r.top_indices[u], ..., :3]))
    np.testing.assert_array_equal(found["conv2"].images(u), want)  # colour only, by index
    np.testing.assert_allclose(found["conv2"].maps[u], np.asarray(acts["conv2"])[
        r.top_indices[u], ..., u], rtol=1e-6)


def test_several_devices_give_the_one_device_results(labelled):
  clf, data, _, _, _, results = labelled
  split = _dissect(clf, data, mesh=sharding.data_mesh(2))[-1]
  for layer, r in results.items():
    for a, b in zip(r, split[layer]):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_adapter_passes_edits_and_captures_through():
  clf = make_classifier(width=4, size=SIZE)
  gen = imagesource.as_generator(clf, label_depth=2)
  x = _labelled_images(3)
  edit = {"conv1": Edit(np.array([1.0, 0, 0, 1.0]), np.zeros(4))}
  image, acts = gen.apply_fn(gen.params, x, edits=edit, capture=("conv2",))
  np.testing.assert_array_equal(np.asarray(image), x)  # the image is the input, labels and all
  _, want = clf.apply_fn(clf.params, x[..., :3], edits=edit, capture=("conv2",))
  np.testing.assert_array_equal(np.asarray(acts["conv2"]), np.asarray(want["conv2"]))
  assert gen.latent_shape == (SIZE, SIZE, 5) and gen.layers == clf.layers
  flat, _ = gen.apply_fn(gen.params, x.reshape(3, -1))
  np.testing.assert_array_equal(np.asarray(flat), x)


def test_lower_precision_classifiers_keep_labels_exact():
  clf = make_classifier(width=4, size=SIZE)
  gen = imagesource.as_generator(precision.classifier_in(clf, "bfloat16"), label_depth=1)
  x = _labelled_images(2)[..., :4]
  x[..., 3] = 1234.0  # not a bfloat16 number: 1232 or 1236 there
  image, acts = gen.apply_fn(gen.params, x, capture=("conv1",))
  np.testing.assert_array_equal(np.asarray(image), x)
  assert acts["conv1"].dtype == np.float32


def test_segmenters_read_label_channels_or_ignore_them():
  x = _labelled_images(2)
  exact = imagesource.exact_labels_segmenter(CONCEPTS, 2)
  labels = np.asarray(exact.label_fn(exact.params, x))
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(labels, np.rint(x[..., 3:]))
  probs = np.asarray(exact.segment_fn(exact.params, x))
  assert probs.shape == (2, SIZE, SIZE, len(CONCEPTS))
  np.testing.assert_array_equal(probs[..., 3] == 1, (labels == 3).any(-1))
  colour = colorseg.make_segmenter()
  wrapped = imagesource.on_colour_channels(colour)
  np.testing.assert_array_equal(np.asarray(wrapped.label_fn(wrapped.params, x)),
                                np.asarray(colour.label_fn(colour.params, x[..., :3])))
  with pytest.raises(ValueError, match=r"label channels.*\[2, 16, 16, 3\]"):
    exact.label_fn(exact.params, x[..., :3])


def test_sources_that_do_not_fit_the_classifier_give_the_named_error():
  clf = make_classifier(width=4, size=SIZE)
  with pytest.raises(ImageDataError, match=r"8x8x3 \(HxWxC\); the classifier takes 16x16x3"):
    imagesource.source(clf, ImageSet(np.zeros((2, 8, 8, 3), np.float32), "small"))
  with pytest.raises(ImageDataError, match="carry no labels; give a segmenter"):
    imagesource.source(clf, ImageSet(np.zeros((2, SIZE, SIZE, 3), np.float32), "plain"))


def _write_folder(root, images):
  """`images` (`[n, H, W, 3]` in [-1, 1]) as PNGs named so that sorting keeps their order."""
  root.mkdir()
  for i, image in enumerate(np.asarray(to_uint8(images))):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    (root / f"{i:03d}.png").write_bytes(buf.getvalue())


def test_an_image_folder_dissects_as_its_decoded_array(tmp_path):
  clf = make_classifier(width=4, size=SIZE)
  _write_folder(tmp_path / "images", _labelled_images(20)[..., :3])
  folder = imagefolder.open_folder(str(tmp_path / "images"), (SIZE, SIZE))
  seg = colorseg.make_segmenter()
  runs = []
  for rows in (folder, folder[:]):  # lazy, then in memory
    gen, wrapped, source = imagesource.source(clf, ImageSet(rows, "images"), seg)
    config = dissect.Config(("conv2",), 20, batch_size=10, warmup=20, latents=source)
    runs.append(dissect.dissect(gen, wrapped, config)["conv2"])
  for a, b in zip(*runs):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
