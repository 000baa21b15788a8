"""Reading `.npy` and `.npz` files from outside safely: no pickles, and no allocation the file
can't back.

`np.load` trusts the header: a forged shape makes it allocate whatever the header says before
finding the data short, and a forged header length (4 bytes in format 2.0) makes it read that
many bytes at once. Latent files and a dissection's tables come from outside, so the header
length is bounded and the shape checked against the bytes that follow before anything is read.
An `.npz` is a zip of `.npy` members, possibly deflated: the members' declared sizes are bounded
before any is inflated, and each is read no further than its declared size.
"""

from __future__ import annotations

import io
import math
import os
import struct
import zipfile
import zlib

import numpy as np

MAX_HEADER_BYTES = 1 << 16  # numpy writes headers of at most a few hundred bytes
MAX_NPZ_MEMBERS = 1 << 16
_MAGIC = b"\x93NUMPY"


def read_npy(path: str, error: type[Exception] = ValueError, max_bytes: int = 16 << 30
             ) -> np.ndarray:
  """The array in `path`; raises `error` (one line naming the file) for anything malformed."""
  try:
    with open(path, "rb") as f:
      size = os.fstat(f.fileno()).st_size
      if size > max_bytes:
        raise ValueError(f"it is {size} bytes, more than {max_bytes}")
      return _array(f, size)
  except (OSError, ValueError, EOFError, TypeError, struct.error, RecursionError,
          UnicodeDecodeError) as e:
    message = " ".join(str(e).split())[:300]
    raise error(f"{path} is not a readable .npy array ({message})") from None


def read_npz(path: str, error: type[Exception] = ValueError, max_bytes: int = 1 << 30
             ) -> dict[str, np.ndarray]:
  """`{name: array}` of the `.npy` members of the zip `path` (what `np.savez` and
  `np.savez_compressed` write); raises `error` (one line naming the file) for anything
  malformed, or members declaring more than `max_bytes` in all."""
  try:
    with zipfile.ZipFile(path) as archive:
      members = archive.infolist()
      if len(members) > MAX_NPZ_MEMBERS:
        raise ValueError(f"it has {len(members)} members, more than {MAX_NPZ_MEMBERS}")
      declared = sum(m.file_size for m in members)
      if declared > max_bytes:
        raise ValueError(f"its members declare {declared} bytes, more than {max_bytes}")
      out = {}
      for m in members:
        name = m.filename[:-4] if m.filename.endswith(".npy") else None
        if name is None or name in out:
          raise ValueError(f"member {m.filename[:80]!r} is not a .npy array of its own name")
        if m.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
          raise ValueError(f"member {name[:80]!r} uses compression {m.compress_type}")
        with archive.open(m) as f:
          data = f.read(m.file_size + 1)
        if len(data) != m.file_size:
          raise ValueError(f"member {name[:80]!r} holds {len(data)} bytes, not the "
                           f"{m.file_size} it declares")
        out[name] = _array(io.BytesIO(data), len(data))
      return out
  except (OSError, ValueError, EOFError, TypeError, struct.error, RecursionError,
          UnicodeDecodeError, zipfile.BadZipFile, zlib.error, NotImplementedError,
          RuntimeError) as e:
    message = " ".join(str(e).split())[:300]
    raise error(f"{path} is not a readable .npz archive ({message})") from None


def _array(f: io.RawIOBase | io.BufferedIOBase, size: int) -> np.ndarray:
  """The array of the `.npy` stream `f` of `size` bytes: header checked, then exactly the bytes
  it declares read (ValueError otherwise)."""
  shape, fortran, dtype = _header(f, size)
  need = math.prod(shape) * dtype.itemsize
  have = size - f.tell()
  if need != have:
    raise ValueError(f"header says {dtype} {list(shape)} ({need} bytes) but {have} bytes "
                     "follow it")
  data = bytearray(need)
  if f.readinto(data) != need:
    raise ValueError("the file changed while it was read")
  return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def _header(f: io.RawIOBase | io.BufferedIOBase, size: int) -> tuple[tuple[int, ...], bool, np.dtype]:
  """`(shape, fortran_order, dtype)` from the header, whose length is checked before reading."""
  head = f.read(10)
  if len(head) < 10 or not head.startswith(_MAGIC):
    raise ValueError(f"it does not start with the .npy magic {_MAGIC!r}")
  major = head[6]
  if major == 1:
    (length,), start = struct.unpack("<H", head[8:10]), 10
  elif major in (2, 3):
    head += f.read(2)
    (length,), start = struct.unpack("<I", head[8:12]), 12
  else:
    raise ValueError(f"unknown .npy format version {major}.{head[7]}")
  if length > MAX_HEADER_BYTES or start + length > size:
    raise ValueError(f"its header declares {length} bytes; at most "
                     f"{min(MAX_HEADER_BYTES, size - start)} are possible")
  buf = io.BytesIO(head + f.read(length))
  version = np.lib.format.read_magic(buf)
  read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
          else np.lib.format.read_array_header_2_0)
  try:
    shape, fortran, dtype = read(buf)
  except Exception as e:  # numpy's header parser (ast, tokenize) raises many types; the header
    # is at most MAX_HEADER_BYTES, so nothing large can be behind any of them.
    raise ValueError(f"its header is malformed ({type(e).__name__}: {e})") from None
  if dtype.hasobject or dtype.subdtype is not None:
    raise ValueError(f"dtype {dtype} is not plain data")
  if any(n < 0 for n in shape):
    raise ValueError(f"shape {list(shape)} has a negative dimension")
  return tuple(shape), bool(fortran), dtype
