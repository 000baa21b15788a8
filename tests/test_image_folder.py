"""The image-folder reader: torchvision's eval transform to the pixel, a deterministic listing,
array-like indexing for the engine, and its own named error, fast, on anything else (fuzzed)."""

import io
import os

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
from PIL import Image

from jaxdissect import imagefolder, latents
from jaxdissect.imagefolder import ImageDataError

SETTINGS = hypothesis.settings(
    max_examples=60, deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])


def _pil(w, h, mode="RGB", seed=0):
  rng = np.random.RandomState(seed)
  pixels = rng.randint(0, 256, (h, w, 3), dtype=np.uint8)
  image = Image.fromarray(pixels)
  return image if mode == "RGB" else image.convert(mode)


def _bytes(image, fmt):
  buf = io.BytesIO()
  image.save(buf, format=fmt)
  return buf.getvalue()


def _torchvision_eval(image, resize, size):
  """Independently: `Resize(resize)` (shorter side, the longer truncated), `CenterCrop(size)`
  (offsets rounded half to even), `ToTensor`, `Normalize(0.5, 0.5)`, in numpy float64."""
  w, h = image.size
  nw, nh = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
  pixels = np.asarray(image.convert("RGB").resize((nw, nh), Image.BILINEAR), np.float64)
  top, left = int(round((nh - size[0]) / 2.0)), int(round((nw - size[1]) / 2.0))
  crop = pixels[top:top + size[0], left:left + size[1]]
  return (crop / 255.0 - 0.5) / 0.5


@pytest.mark.parametrize("w, h, mode, fmt", [
    (40, 30, "RGB", "PNG"),   # landscape: width 21.33 -> 21, crop offset 2.5 -> 2 (half to even)
    (30, 47, "RGB", "PNG"),   # portrait, odd
    (16, 16, "RGB", "PNG"),   # already the size: unchanged
    (9, 12, "RGB", "PNG"),    # smaller than the crop: enlarged
    (50, 37, "L", "PNG"),     # grey
    (33, 33, "RGBA", "PNG"),  # alpha dropped
    (45, 29, "P", "PNG"),     # palette
    (40, 31, "RGB", "JPEG"),
    (20, 64, "RGB", "BMP"),
])
def test_resize_and_crop_equal_torchvision_by_pil(w, h, mode, fmt):
  image = _pil(w, h, mode)
  raw = _bytes(image, fmt)
  got = imagefolder.decode_image(raw, (16, 16), 16)
  want = _torchvision_eval(Image.open(io.BytesIO(raw)), 16, (16, 16))
  assert got.dtype == np.float32 and got.shape == (16, 16, 3)
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_a_resize_larger_than_the_crop_and_a_non_square_crop():
  image = _pil(50, 41)
  raw = _bytes(image, "PNG")
  np.testing.assert_allclose(imagefolder.decode_image(raw, (16, 16), 20),
                             _torchvision_eval(image, 20, (16, 16)), atol=1e-6)
  np.testing.assert_allclose(imagefolder.decode_image(raw, (12, 18), 18),
                             _torchvision_eval(image, 18, (12, 18)), atol=1e-6)


def test_geometry_by_hand():
  assert imagefolder.resized_size(40, 30, 16) == (21, 16)  # 16 * 40 / 30 = 21.33
  assert imagefolder.resized_size(30, 47, 16) == (16, 25)  # 16 * 47 / 30 = 25.07
  assert imagefolder.crop_box(21, 16, (16, 16)) == (2, 0, 18, 16)  # round(2.5) = 2
  assert imagefolder.crop_box(23, 16, (16, 16)) == (4, 0, 20, 16)  # round(3.5) = 4


def test_without_resizing_pixels_map_to_minus_one_one_and_sizes_must_match():
  pixels = np.array([[[0, 255, 128]]], np.uint8).repeat(4, 0).repeat(5, 1)
  raw = _bytes(Image.fromarray(pixels), "PNG")
  got = imagefolder.decode_image(raw, (4, 5), None)
  np.testing.assert_allclose(got[0, 0], [-1.0, 1.0, 128 / 127.5 - 1], atol=1e-7)
  with pytest.raises(ImageDataError, match=r"x.png is 4x5 \(HxW\); the model takes 8x8"):
    imagefolder.decode_image(raw, (8, 8), None, name="x.png")


@pytest.fixture
def folder(tmp_path):
  """Images in nested folders, with hidden entries and a non-image file to skip."""
  root = tmp_path / "images"
  for rel, (w, h), fmt in [("b.png", (20, 30), "PNG"), ("a/z.JPG", (30, 20), "JPEG"),
                           ("a/c.jpeg", (16, 16), "JPEG"), ("A0.bmp", (40, 17), "BMP"),
                           ("d/e/f.webp", (25, 25), "WEBP")]:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(_bytes(_pil(w, h, seed=len(rel)), fmt))
  (root / "notes.txt").write_text("not an image")
  (root / "._b.png").write_bytes(b"AppleDouble")  # hidden: never read
  (root / ".cache").mkdir()
  (root / ".cache" / "x.png").write_bytes(b"junk")
  return root


def test_listing_is_recursive_sorted_and_skips_hidden_and_other_files(folder):
  files, skipped = imagefolder.list_images(str(folder))
  assert files == ("A0.bmp", "a/c.jpeg", "a/z.JPG", "b.png", "d/e/f.webp")
  assert skipped == 1
  data = imagefolder.open_folder(str(folder), (16, 16))
  assert len(data) == 5 and data.shape == (5, 16, 16, 3) and data.resize == 16
  record = data.record()
  assert record["count"] == 5 and record["skipped_files"] == 1 and record["resize"] == 16
  assert record == imagefolder.open_folder(str(folder), (16, 16)).record()  # deterministic
  (folder / "new.png").write_bytes(_bytes(_pil(8, 8), "PNG"))
  assert imagefolder.open_folder(str(folder), (16, 16)).record()["sha256"] != record["sha256"]


def test_indexing_like_an_array_and_as_latents(folder):
  data = imagefolder.open_folder(str(folder), (16, 16), workers=3)
  each = np.stack([imagefolder.read_image(data.path(i), (16, 16), 16) for i in range(5)])
  np.testing.assert_array_equal(data[:], each)
  np.testing.assert_array_equal(data[1:4], each[1:4])
  np.testing.assert_array_equal(data[np.array([4, 0, 4])], each[[4, 0, 4]])
  np.testing.assert_array_equal(data[-1], each[4])
  assert data[np.array([], np.int64)].shape == (0, 16, 16, 3)
  with pytest.raises(IndexError, match="5 images"):
    data[5]  # pylint: disable=pointless-statement
  source = latents.Latents(array=data, origin=str(folder))
  source.check(5, (16, 16, 3))
  batches = list(source.batches(5, 2, (16, 16, 3)))
  assert [first for first, _ in batches] == [0, 2, 4]
  np.testing.assert_array_equal(np.concatenate([z for _, z in batches]), each)
  np.testing.assert_array_equal(source.rows(np.array([3, 1]), (16, 16, 3)), each[[3, 1]])
  record = source.record()
  assert record["source"] == "array" and record["count"] == 5
  assert record["digest_of"] == "sorted file list"


def test_bad_folders_and_files_give_the_named_error(tmp_path, folder):
  (tmp_path / "empty").mkdir()
  (tmp_path / "texts").mkdir()
  (tmp_path / "texts" / "a.txt").write_text("x")
  cases = [(str(tmp_path / "empty"), "no image files"),
           (str(tmp_path / "texts"), "holds 1 other files"),
           (str(tmp_path / "nosuch"), "does not exist"),
           (str(folder / "b.png"), "is not a folder")]
  for root, words in cases:
    with pytest.raises(ImageDataError, match=words):
      imagefolder.open_folder(root, (16, 16))
  with pytest.raises(ImageDataError, match="at least 16"):
    imagefolder.open_folder(str(folder), (16, 16), resize=8)
  # A non-image behind an image extension is found when read, naming the file.
  (folder / "a" / "c.jpeg").write_bytes(b"this is not a jpeg")
  data = imagefolder.open_folder(str(folder), (16, 16))
  with pytest.raises(ImageDataError, match=r"a.c\.jpeg: not an image file"):
    data[0:3]  # pylint: disable=pointless-statement
  os.chmod(folder / "b.png", 0)
  if not os.access(folder / "b.png", os.R_OK):  # root reads anything
    with pytest.raises(ImageDataError, match=r"b\.png: cannot be read"):
      data[3]  # pylint: disable=pointless-statement
  # Without resizing, every image must be the model's size.
  with pytest.raises(ImageDataError, match=r"A0\.bmp is 17x40 \(HxW\); the model takes 16x16"):
    imagefolder.open_folder(str(folder), (16, 16), resize=None)[0]


def _check_fails_cleanly(raw):
  try:
    out = imagefolder.decode_image(raw, (8, 8), 8, name="fuzz")
  except ImageDataError as e:
    assert "\n" not in str(e) and str(e).startswith("fuzz")
  else:
    assert out.shape == (8, 8, 3) and out.dtype == np.float32
    assert np.all(out >= -1) and np.all(out <= 1)


@SETTINGS
@hypothesis.given(raw=st.binary(max_size=400))
def test_random_bytes_fail_only_with_the_named_error(raw):
  _check_fails_cleanly(raw)


VALID = {fmt: _bytes(_pil(13, 11, seed=3), fmt) for fmt in ("PNG", "JPEG", "BMP", "GIF")}


@SETTINGS
@hypothesis.given(fmt=st.sampled_from(sorted(VALID)), data=st.data())
def test_truncated_and_corrupted_images_fail_only_with_the_named_error(fmt, data):
  raw = bytearray(VALID[fmt])
  if data.draw(st.booleans()):
    raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
  for _ in range(data.draw(st.integers(0, 4))):
    if raw:
      raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
  _check_fails_cleanly(bytes(raw))


def test_every_truncation_of_a_png_and_a_jpeg_fails_cleanly():
  for fmt in ("PNG", "JPEG"):
    raw = VALID[fmt]
    for cut in range(0, len(raw), 7):
      _check_fails_cleanly(raw[:cut])
  with pytest.raises(ImageDataError, match="truncated|corrupt"):
    imagefolder.decode_image(VALID["PNG"][:-30], (8, 8), 8)


def test_a_forged_huge_header_is_refused_before_decoding():
  png = bytearray(_bytes(_pil(8, 8), "PNG"))
  png[16:24] = (100000).to_bytes(4, "big") * 2  # IHDR width and height (the CRC now mismatches)
  with pytest.raises(ImageDataError):
    imagefolder.decode_image(bytes(png), (8, 8), 8)
