"""Reads a small file from outside whole, refusing it unread when it is larger than its kind can be.

Label lists, class-name files, `latest.json` and dissection documents are read into memory in one
go; a damaged or hostile file must not make a reader allocate whatever it happens to hold. The
callers turn the ValueError raised here into their own named errors.
"""

from __future__ import annotations

import json
import os
from typing import Any


class FileTooLarge(ValueError):
  """A file larger than the limit its reader allows; raised before any of it is read."""


def read_bytes(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
  """The bytes of `path`, or FileTooLarge when it holds more than `limit` (checked by fstat)."""
  with open(path, "rb") as f:
    size = os.fstat(f.fileno()).st_size
    if size > limit:
      raise FileTooLarge(f"it is {size} bytes, more than the {limit} a {what} can be")
    data = f.read(size + 1)  # read(n) allocates n bytes first: ask only for what fstat saw
  if len(data) > size:  # grew while being read (a file being written)
    raise FileTooLarge(f"it grew past its {size} bytes while being read")
  return data


def read_json(path: str | os.PathLike, limit: int, what: str = "JSON document") -> Any:
  """The JSON document at `path` (UTF-8, at most `limit` bytes). Raises OSError, FileTooLarge,
  UnicodeDecodeError, ValueError (bad JSON) or RecursionError (nested beyond the parser)."""
  return json.loads(read_bytes(path, limit, what).decode("utf-8"))


def one_line(error: BaseException | str, most: int = 200) -> str:
  """`error`'s text on one line, cut to `most` characters, for a one-line error message."""
  text = " ".join(str(error).split())
  return text if len(text) <= most else text[:most] + "..."
