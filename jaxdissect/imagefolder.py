"""A folder of image files as a lazy array of model-ready images (for classifier dissection).

A classifier is dissected over a dataset, often far larger than memory (Places365's validation
set is 36,500 photos). The dissection engine reads its inputs as rows of an array by index
(`jaxdissect.latents.Latents`): batch after batch, then again for each unit's top images. So a
folder becomes an object that behaves like such an array (`len`, `shape`, slices and index
arrays) and decodes only the rows asked for.

The rows are what torchvision's usual evaluation transform makes of each file, so a port of a
PyTorch classifier sees the pixels it was validated on: `Resize(resize)` (shorter side to
`resize`, PIL bilinear) then `CenterCrop(size)`, as RGB (alpha dropped, no EXIF rotation, as
torchvision's loader), mapped to `[-1, 1]` float32. The files are every image (by extension)
under the folder, recursively, in sorted order of their relative paths, so a row number names
the same file on every machine. Hidden files and folders (names starting with '.', such as
macOS's `._x.jpg`) and files with other extensions are skipped.

Files come from outside: anything that is not a whole image, or not the size the model needs,
fails with an `ImageDataError`, one line naming the file. Declared dimensions are checked before
any pixel is decoded: against PIL's `MAX_IMAGE_PIXELS`, and for a PNG against what its bytes can
hold (deflate expands at most ~1032-fold), so a small file cannot make the reader allocate much.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

# Extensions read as images (torchvision's IMG_EXTENSIONS), compared case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageDataError(ValueError):
  """Images that cannot be dissected: no images, an unreadable or corrupt file, a wrong size."""


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by IHDR colour type
_DEFLATE_RATIO = 1100  # deflate's limit is 1032:1; a little slack for headers


def png_bomb(raw: bytes) -> str | None:
  """Why the PNG `raw` declares more pixel bytes than its compressed data can hold, or None
  (also for non-PNG bytes and headers too short to say)."""
  if not raw.startswith(_PNG_SIGNATURE) or len(raw) < 29 or raw[12:16] != b"IHDR":
    return None
  width, height = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
  depth, channels = raw[24], _PNG_CHANNELS.get(raw[25], 4)
  declared = height * (1 + (width * channels * max(depth, 1) + 7) // 8)
  if declared <= _DEFLATE_RATIO * len(raw) + (1 << 16):
    return None
  return (f"a PNG of {len(raw)} bytes declaring {width}x{height} (WxH) pixels, {declared} bytes "
          "once inflated: more than its compressed data can hold")


def _one_line(text: object) -> str:
  return " ".join(str(text).split())


def crop_box(width: int, height: int, size: Sequence[int]) -> tuple[int, int, int, int]:
  """The `(left, top, right, bottom)` of torchvision's `CenterCrop(size)` (size is H, W)."""
  top = int(round((height - size[0]) / 2.0))
  left = int(round((width - size[1]) / 2.0))
  return left, top, left + size[1], top + size[0]


def resized_size(width: int, height: int, resize: int) -> tuple[int, int]:
  """The `(width, height)` of torchvision's `Resize(resize)`: shorter side to `resize`, the
  longer scaled alike and truncated."""
  if width <= height:
    return resize, int(resize * height / width)
  return int(resize * width / height), resize


def decode_image(raw: bytes, size: Sequence[int], resize: int | None, name: str = "image"
                 ) -> np.ndarray:
  """`[H, W, 3]` float32 in `[-1, 1]` of the image file bytes `raw` (`size` is H, W).

  `resize`: the shorter side before the centre crop (torchvision's Resize + CenterCrop); None
  takes the image as it is, which must then be exactly `size`. Raises ImageDataError naming
  `name` for bytes that are not a whole image, one too large to decode, or a wrong size.
  """
  bomb = png_bomb(raw)
  if bomb is not None:
    raise ImageDataError(f"{name}: {bomb}")
  try:
    image = Image.open(io.BytesIO(raw))
  except Image.DecompressionBombError as e:
    raise ImageDataError(f"{name}: too large to decode ({_one_line(e)})") from None
  except Image.UnidentifiedImageError:
    raise ImageDataError(f"{name}: not an image file ({len(raw)} bytes in no format PIL "
                         "reads)") from None
  except Exception as e:  # PIL raises many types for headers it cannot parse.
    raise ImageDataError(f"{name}: not an image file ({len(raw)} bytes; "
                         f"{type(e).__name__}: {_one_line(e)})") from None
  with image:
    width, height = image.size
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
      raise ImageDataError(f"{name}: {width}x{height} (WxH) is more than {limit} pixels")
    if resize is None and (height, width) != tuple(size):
      raise ImageDataError(f"{name} is {height}x{width} (HxW); the model takes {size[0]}x{size[1]}"
                           " images: resize them, or let the reader resize and crop them")
    try:
      image = image.convert("RGB")
      if resize is not None:
        image = image.resize(resized_size(width, height, resize), Image.BILINEAR)
        if image.height < size[0] or image.width < size[1]:
          raise ImageDataError(f"{name} is {height}x{width} (HxW), {image.height}x{image.width} "
                               f"after resizing its shorter side to {resize}: too small to crop "
                               f"{size[0]}x{size[1]}; resize to at least {max(size)}")
        image = image.crop(crop_box(image.width, image.height, size))
      pixels = np.asarray(image, np.uint8)
    except ImageDataError:
      raise
    except Exception as e:  # truncated or corrupt pixel data, modes PIL cannot convert
      raise ImageDataError(f"{name}: corrupt or unsupported image ({type(e).__name__}: "
                           f"{_one_line(e)})") from None
  return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def read_image(path: str, size: Sequence[int], resize: int | None) -> np.ndarray:
  """`decode_image` of the file at `path` (ImageDataError naming it when it cannot be read)."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise ImageDataError(f"{path}: cannot be read ({_one_line(e.strerror or e)})") from None
  return decode_image(raw, size, resize, name=path)


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(root: str) -> tuple[tuple[str, ...], int]:
  """The image files under `root` (relative paths with '/', sorted) and how many other files
  were skipped. Hidden entries are neither listed nor counted; linked folders are followed once.
  """
  files, skipped, seen = [], 0, set()
  for folder, dirs, names in os.walk(root, followlinks=True):
    real = os.path.realpath(folder)
    if real in seen:  # a link back up the tree
      dirs[:] = []
      continue
    seen.add(real)
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    rel = os.path.relpath(folder, root)
    for name in names:
      if name.startswith("."):
        continue
      if _is_image(name):
        files.append(name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}")
      else:
        skipped += 1
  return tuple(sorted(files)), skipped


def row_positions(index: Any, count: int, owner: str, noun: str, where: str = ""
                  ) -> tuple[list[int], bool]:
  """The rows of `count` that `index` (an int, a slice, a list or a 1-D integer array) names,
  as non-negative positions, and whether it was one int; IndexError names `owner` (e.g. "an
  ImageFolder is") or the `noun` out of range. The indexing of every lazy dataset array."""
  def position(i: int) -> int:
    if not -count <= i < count:
      raise IndexError(f"{noun} {i} is out of range for {count} {noun}s{where}")
    return int(i) % count

  if isinstance(index, (int, np.integer)):
    return [position(index)], True
  if isinstance(index, slice):
    return list(range(count)[index]), False
  index = np.asarray(index)
  if index.ndim != 1 or not (np.issubdtype(index.dtype, np.integer) or index.size == 0):
    raise IndexError(f"{owner} indexed by an int, a slice or a 1-D integer array, "
                     f"not {index.dtype} of shape {list(index.shape)}")
  return [position(i) for i in index.tolist()], False


class ImageFolder:
  """The images of a folder as a read-only `[N, H, W, 3]` float32 array, decoded on indexing.

  Indexing with an int gives one `[H, W, 3]` image; a slice, a list or an integer array give
  `[len, H, W, 3]`. Rows are decoded by up to `workers` threads (PIL decodes without the GIL).
  """

  def __init__(self, root: str, files: Sequence[str], size: Sequence[int], resize: int | None,
               skipped: int = 0, workers: int | None = None):
    self.root, self.files = root, tuple(files)
    self.size, self.resize, self.skipped = (int(size[0]), int(size[1])), resize, skipped
    self.workers = workers or min(8, os.cpu_count() or 1)

  @property
  def shape(self) -> tuple[int, int, int, int]:
    return (len(self.files), *self.size, 3)

  @property
  def dtype(self) -> np.dtype:
    return np.dtype(np.float32)

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: Any) -> np.ndarray:
    rows, one = row_positions(index, len(self.files), "an ImageFolder is", "image",
                              f" in {self.root}")
    images = self._read(rows)
    return images[0] if one else images

  def path(self, i: int) -> str:
    """The file of row `i`."""
    return os.path.join(self.root, *self.files[i].split("/"))

  def _read(self, rows: Sequence[int]) -> np.ndarray:
    out = np.empty((len(rows), *self.size, 3), np.float32)
    read = lambda i: read_image(self.path(i), self.size, self.resize)
    if len(rows) <= 1 or self.workers <= 1:
      for j, i in enumerate(rows):
        out[j] = read(i)
      return out
    with concurrent.futures.ThreadPoolExecutor(min(self.workers, len(rows))) as pool:
      for j, image in enumerate(pool.map(read, rows)):
        out[j] = image
    return out

  def record(self) -> dict[str, Any]:
    """What a dissection records about these images: the folder, the count, the reader's rule
    and a digest of the sorted file list (not of the pixels: reading every file to describe
    a run would cost as much as the run)."""
    listing = "\n".join(self.files).encode("utf-8", "surrogateescape")
    return {"origin": os.path.abspath(self.root), "count": len(self.files),
            "shape": [*self.size, 3], "sha256": hashlib.sha256(listing).hexdigest(),
            "digest_of": "sorted file list", "reader": "image_folder",
            "resize": self.resize, "skipped_files": self.skipped}


def open_folder(root: str, size: Sequence[int], resize: int | None = -1,
                workers: int | None = None) -> ImageFolder:
  """The images under `root` for a model taking `size` (H, W) images.

  `resize`: the shorter side each image is resized to before the centre crop; -1 (default) the
  model's larger side, so the crop loses the least; None no resizing (every image must then be
  `size`, checked as it is read). Raises ImageDataError when `root` is not a folder, holds no
  images, or `resize` is smaller than the crop.
  """
  size = (int(size[0]), int(size[1]))
  if resize == -1:
    resize = max(size)
  if resize is not None and (not isinstance(resize, (int, np.integer)) or resize < max(size)):
    raise ImageDataError(f"resize is {resize!r}; the shorter side must be resized to at least "
                         f"{max(size)} to crop the model's {size[0]}x{size[1]}, or None to take "
                         "images as they are")
  if not os.path.isdir(root):
    what = "does not exist" if not os.path.exists(root) else "is not a folder"
    raise ImageDataError(f"image folder {root} {what}")
  files, skipped = list_images(root)
  if not files:
    others = f"; it holds {skipped} other files" if skipped else ""
    raise ImageDataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}{others}")
  return ImageFolder(root, files, size, None if resize is None else int(resize), skipped, workers)
