"""Colour segmenter: sRGB->Lab against an independent numpy reading of the standard formulas and
published values, colour names of unambiguous colours, the achromatic rule, and the protocol."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import colorseg, zoo

# --- Independent reference: sRGB (0-255) -> CIE L*a*b*, D65, float64 ---------------------------

_M = np.array([[0.4124564, 0.3575761, 0.1804375],
               [0.2126729, 0.7151522, 0.0721750],
               [0.0193339, 0.1191920, 0.9503041]])
_WHITE = np.array([0.95047, 1.0, 1.08883])


def _np_lab(rgb255):
  c = np.asarray(rgb255, np.float64) / 255.0
  lin = np.where(c <= 0.04045, c / 12.92, np.power((c + 0.055) / 1.055, 2.4))
  t = np.einsum("ij,...j->...i", _M, lin) / _WHITE
  eps = (6 / 29) ** 3
  f = np.where(t > eps, np.cbrt(t), t * (841 / 108) + 16 / 116)
  return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                   200 * (f[..., 1] - f[..., 2])], axis=-1)


def _image(rgb255):
  """A `[1, 1, N, 3]` image in [-1, 1] from N 8-bit colours."""
  return jnp.asarray(np.asarray(rgb255, np.float32)[None, None] / 127.5 - 1.0)


def _names(seg, rgb255):
  labels = np.asarray(seg.label_fn(seg.params, _image(rgb255)))[0, 0, :, 0]
  return [seg.concepts[i][0] for i in labels]


@pytest.fixture(scope="module")
def seg():
  return colorseg.make_segmenter()


def test_lab_matches_numpy_reference_on_random_pixels():
  rgb = np.random.default_rng(0).uniform(0, 255, (4096, 3))
  ours = np.asarray(colorseg.srgb_to_lab(jnp.asarray(rgb / 255.0, jnp.float32)))
  np.testing.assert_allclose(ours, _np_lab(rgb.astype(np.float32)), rtol=0, atol=1e-4)


def test_lab_matches_published_values():
  # CIELAB (D65) of the sRGB primaries, white and mid grey as commonly tabulated.
  table = {(255, 0, 0): (53.24, 80.09, 67.20), (0, 255, 0): (87.73, -86.18, 83.18),
           (0, 0, 255): (32.30, 79.19, -107.86), (255, 255, 255): (100.0, 0.0, 0.0),
           (128, 128, 128): (53.59, 0.0, 0.0), (0, 0, 0): (0.0, 0.0, 0.0)}
  ours = np.asarray(colorseg.srgb_to_lab(jnp.asarray(list(table), jnp.float32) / 255.0))
  np.testing.assert_allclose(ours, np.asarray(list(table.values())), atol=0.01)


def test_named_colours_get_their_names(seg):
  named = {(255, 0, 0): "red", (0, 0, 255): "blue", (255, 255, 255): "white", (0, 0, 0): "black",
           (128, 128, 128): "grey", (255, 165, 0): "orange", (139, 69, 19): "brown",
           (0, 128, 0): "green", (255, 255, 0): "yellow", (128, 0, 128): "purple",
           (255, 192, 203): "pink",
           # not prototypes: CSS navy, lime, forest green, gold, hot pink, blue violet, sienna,
           # dark orange, crimson, slate grey, near-white and near-black
           (0, 0, 128): "blue", (0, 255, 0): "green", (34, 139, 34): "green",
           (238, 232, 170): "yellow", (255, 105, 180): "pink", (138, 43, 226): "purple",
           (160, 82, 45): "brown", (255, 140, 0): "orange", (220, 20, 60): "red",
           (112, 128, 144): "grey", (245, 245, 245): "white", (20, 20, 20): "black"}
  assert _names(seg, list(named)) == list(named.values())


def test_every_prototype_is_named_by_its_colour(seg):
  pairs = [(rgb, name) for name, protos in colorseg.PROTOTYPES.items() for rgb in protos]
  assert _names(seg, [rgb for rgb, _ in pairs]) == [name for _, name in pairs]


def test_near_neutral_pixels_are_named_by_lightness_alone(seg):
  # A faint tint (chroma <= the floor) never makes a pixel chromatic; lightness orders
  # black, grey, white along each ramp.
  levels = np.arange(0, 256, 5)
  tints = ((0, 0, 0), (5, 0, 0), (0, 0, 5), (3, 3, 0), (0, 4, 0))
  rgb = np.concatenate([np.clip(levels[:, None] + np.asarray(t), 0, 255) for t in tints])
  assert (np.hypot(*_np_lab(rgb)[:, 1:].T) <= colorseg.CHROMA_FLOOR).all()
  for names in np.split(np.asarray(_names(seg, rgb)), len(tints)):
    order = [("black", "grey", "white").index(n) for n in names]
    assert order == sorted(order) and order[0] == 0 and order[-1] == 2, names


def test_achromatic_rule_beats_a_prototype_on_the_pixel_itself(seg):
  # Give pink an extra prototype exactly at a faintly pink grey pixel (chroma about 3): plain
  # nearest-prototype naming would call it pink; the rule keeps it grey.
  pixel = (150, 144, 146)
  assert np.hypot(*_np_lab(pixel)[1:]) <= colorseg.CHROMA_FLOOR
  pink = colorseg.COLOURS.index("pink")
  prototypes = seg.params["prototypes"].at[pink, -1].set(_np_lab(pixel).astype(np.float32))
  ruled = seg._replace(params=dict(seg.params, prototypes=prototypes))
  unruled = seg._replace(params=dict(ruled.params, achromatic_penalty=jnp.float32(0.0)))
  assert _names(ruled, [pixel]) == ["grey"]
  assert _names(unruled, [pixel]) == ["pink"]
  # Vivid pixels (chroma beyond floor + ramp) are untouched by the rule.
  vivid = np.random.default_rng(2).integers(0, 256, (256, 3))
  vivid = vivid[np.hypot(*_np_lab(vivid)[:, 1:].T) > colorseg.CHROMA_FLOOR + colorseg.CHROMA_RAMP]
  no_rule = seg._replace(params=dict(seg.params, achromatic_penalty=jnp.float32(0.0)))
  assert _names(seg, vivid) == _names(no_rule, vivid)


def test_probabilities_agree_with_labels(seg):
  images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1.0, maxval=1.0)
  probs = jax.jit(seg.segment_fn)(seg.params, images)
  labels = jax.jit(seg.label_fn)(seg.params, images)
  assert probs.shape == (2, 16, 16, 12) and probs.dtype == jnp.float32
  assert labels.shape == (2, 16, 16, 1) and labels.dtype == jnp.int32
  assert np.all(np.asarray(probs[..., 0]) == 0.0)
  np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(np.argmax(np.asarray(probs), -1), np.asarray(labels)[..., 0])
  assert set(np.unique(labels)) <= set(range(1, 12))


def test_concepts_are_the_eleven_colour_terms(seg):
  assert seg.concepts[0] == ("-", "-") and len(seg.concepts) == 12
  assert [n for n, _ in seg.concepts[1:]] == ["black", "blue", "brown", "green", "grey", "orange",
                                               "pink", "purple", "red", "white", "yellow"]
  assert {c for _, c in seg.concepts[1:]} == {"color"}


def test_probabilities_are_differentiable_everywhere(seg):
  # Pure black, grey and white pixels sit on the branch points of the Lab curves and chroma.
  images = _image([(0, 0, 0), (128, 128, 128), (255, 255, 255), (200, 30, 60)])
  grad = jax.grad(lambda x: jnp.sum(seg.segment_fn(seg.params, x)[..., 1:] ** 2))(images)
  assert np.isfinite(np.asarray(grad)).all()
  assert np.abs(np.asarray(grad[0, 0, 3])).max() > 0


def test_downsample_labels_the_pooled_image():
  images = jax.random.uniform(jax.random.key(1), (2, 8, 12, 3), minval=-1.0, maxval=1.0)
  seg4 = colorseg.make_segmenter(downsample=4)
  labels = seg4.label_fn(seg4.params, images)
  assert labels.shape == (2, 2, 3, 1)
  assert seg4.segment_fn(seg4.params, images).shape == (2, 2, 3, 12)
  pooled = np.asarray(images).reshape(2, 2, 4, 3, 4, 3).mean(axis=(2, 4))
  full = colorseg.make_segmenter()
  np.testing.assert_array_equal(labels, full.label_fn(full.params, jnp.asarray(pooled)))


def test_bad_settings_are_named():
  with pytest.raises(ValueError, match="downsample is 0"):
    colorseg.make_segmenter(downsample=0)
  with pytest.raises(ValueError, match="temperature is -1"):
    colorseg.make_segmenter(temperature=-1.0)
  seg3 = colorseg.make_segmenter(downsample=3)
  with pytest.raises(ValueError, match="8x8 cannot be downsampled by 3"):
    seg3.label_fn(seg3.params, jnp.zeros((1, 8, 8, 3)))


def test_registered_in_the_zoo():
  seg = zoo.load_segmenter("color")
  assert seg.concepts == colorseg.CONCEPTS
  assert _names(seg, [(255, 0, 0)]) == ["red"]
