"""One mask rule: a stroke saved from the paint page and a white-on-black PNG mean one region.

The page sends its stroke canvas (opaque black strokes on a transparent canvas) as a PNG; people
draw `ablate --mask` files white on black. Both must read the same through
`jaxdissect.masks.mask_from_image`, via the paint server's decoder and via `mask_io.load_mask`.
"""

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from experiments import mask_io
from experiments.cli import UsageError
from jaxdissect import masks, paint

SIZE = (32, 48)


def _stroke() -> np.ndarray:
  """`[H, W]` bool: a diagonal band with a few isolated pixels."""
  y, x = np.mgrid[:SIZE[0], :SIZE[1]]
  inside = np.abs(y - x / 2) < 3
  inside[0, -1] = inside[-1, 0] = True
  return inside


def _png(image: Image.Image, **save) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format="PNG", **save)
  return buffer.getvalue()


def _page_png(inside: np.ndarray) -> bytes:
  """As the page makes it: RGBA, transparent background, black strokes opaque, with a faint
  anti-aliased rim (alpha 1..254, still inside)."""
  alpha = np.where(inside, 255, 0).astype(np.uint8)
  alpha[np.roll(inside, 1, axis=1) & ~inside] = 1  # faint rim, outside the band
  rgba = np.zeros((*inside.shape, 4), np.uint8)
  rgba[..., 3] = alpha
  return _png(Image.fromarray(rgba, "RGBA"))


def _white_on_black_png(inside: np.ndarray) -> bytes:
  grey = np.where(inside, 255, 0).astype(np.uint8)
  grey[~inside] = 127  # mid-grey is still outside
  return _png(Image.fromarray(grey, "L"))


def _rim(inside: np.ndarray) -> np.ndarray:
  return inside | (np.roll(inside, 1, axis=1) & ~inside)


def test_page_stroke_and_white_on_black_give_the_same_mask(tmp_path):
  inside = _stroke()
  want = _rim(inside).astype(np.float32)
  page = _page_png(inside)
  grey = _white_on_black_png(_rim(inside))
  grids = mask_io.Grids(image=SIZE, labels=SIZE, layer=(SIZE[0] // 4, SIZE[1] // 4))
  for i, raw in enumerate([page, grey]):
    np.testing.assert_array_equal(masks.mask_from_image(Image.open(io.BytesIO(raw))), want)
    url = paint.PNG_PREFIX + base64.b64encode(raw).decode("ascii")
    np.testing.assert_array_equal(paint.decode_mask(url, SIZE), want)
    path = tmp_path / f"mask{i}.png"
    path.write_bytes(raw)
    np.testing.assert_array_equal(masks.read_png_mask(str(path), SIZE), want)
    np.testing.assert_array_equal(mask_io.load_mask(str(path), grids).region, want)


@pytest.mark.parametrize("mode", ["LA", "P", "L", "RGB"])
def test_alpha_wins_wherever_the_png_has_it(mode):
  """Transparency as a band (LA) or as a transparent colour (P, L, RGB with tRNS): inside =
  not transparent, whatever the grey level (dark strokes count)."""
  inside = _stroke()
  grey = np.where(inside, 40, 200).astype(np.uint8)  # dark stroke on a light, transparent field
  if mode == "LA":
    image = Image.fromarray(np.dstack([grey, np.where(inside, 255, 0).astype(np.uint8)]), "LA")
    raw = _png(image)
  else:
    image = Image.fromarray(grey, "L").convert(mode)
    raw = _png(image, transparency=200 if mode != "RGB" else (200, 200, 200))
  np.testing.assert_array_equal(masks.read_png_mask(raw, SIZE), inside.astype(np.float32))


def _header_only_png(height: int, width: int) -> bytes:
  """A PNG that declares `height` x `width` grey pixels and holds none of them."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_size_is_checked_from_the_header_before_decoding():
  """A PNG declaring more pixels than it holds fails on its size, before any decoding."""
  with pytest.raises(masks.MaskSizeError, match="5000x7000") as info:
    masks.read_png_mask(_header_only_png(5000, 7000), SIZE)
  assert info.value.got == (5000, 7000) and info.value.want == SIZE
  with pytest.raises(ValueError, match="too large"):  # PIL's decompression-bomb limit
    masks.read_png_mask(_header_only_png(100_000, 100_000), SIZE)


def test_unreadable_bytes_are_one_line_value_errors():
  noise = _png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), np.uint8)))
  jpeg = io.BytesIO()
  Image.new("L", (8, 8)).save(jpeg, format="JPEG")
  for raw, message in [(b"not a png", "not a PNG image"), (jpeg.getvalue(), "JPEG image"),
                       (noise[:len(noise) // 2], "not a readable PNG")]:
    with pytest.raises(ValueError, match=message):
      masks.read_png_mask(raw, (8, 8))


def test_load_mask_errors_name_the_file(tmp_path):
  grids = mask_io.Grids(image=SIZE, labels=SIZE, layer=SIZE)
  cases = {"blank.png": (_page_png(np.zeros(SIZE, bool)), "is empty"),
           "small.png": (_page_png(np.ones((16, 16), bool)),
                         "is 16x16 pixels; draw it at the generated image's size, 32x48"),
           "bad.png": (b"GIF89a", "not a readable image")}
  for name, (raw, message) in cases.items():
    (tmp_path / name).write_bytes(raw)
    with pytest.raises(UsageError, match=message):
      mask_io.load_mask(str(tmp_path / name), grids)
  with pytest.raises(UsageError, match="not a readable image"):
    mask_io.load_mask(str(tmp_path / "missing.png"), grids)
