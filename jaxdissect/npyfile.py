"""Reading `.npy` files from outside safely: no pickles, and no allocation the file can't back.

`np.load` trusts the header: a forged shape makes it allocate whatever the header says before
finding the data short. Latent files and a dissection's tables come from outside, so their
header is checked against the bytes that follow it first.
"""

from __future__ import annotations

import os

import numpy as np


def read_npy(path: str, error: type[Exception] = ValueError, max_bytes: int = 16 << 30
             ) -> np.ndarray:
  """The array in `path`; raises `error` (one line naming the file) for anything malformed."""
  try:
    size = os.path.getsize(path)
    if size > max_bytes:
      raise ValueError(f"it is {size} bytes, more than {max_bytes}")
    with open(path, "rb") as f:
      version = np.lib.format.read_magic(f)
      read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
      shape, _, dtype = read(f)
      need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
      have = size - f.tell()
      if dtype.hasobject or need != have:
        raise ValueError(f"header says {dtype} {list(shape)} ({need} bytes) but {have} bytes "
                         "follow it")
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise error(f"{path} is not a readable .npy array ({e})") from None
