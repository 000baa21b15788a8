"""Reads `torch.save` checkpoints into numpy without importing torch or running code from the file.

The published GAN Dissection weights are `.pth` files. `torch.load` would make torch a dependency
of the library and, worse, unpickling executes whatever callables the file names. This reader
understands both layouts torch has written:

  * the zip archive of torch >= 1.6: `<folder>/data.pkl` (the pickled object), one record
    `<folder>/data/<key>` of raw bytes per storage, and `<folder>/byteorder`;
  * the legacy stream of older torch: pickles of a magic number, the protocol version and a
    sys-info dict, then the main pickle, then the pickled list of storage keys followed by each
    storage's raw bytes, preceded by its element count as a little-endian int64.

Unpickling goes through an allow-list. The few torch globals that a state dict uses (tensor and
parameter rebuild functions, storage classes, `torch.Size`) map to numpy stand-ins written here;
any other global is refused, naming it, when the pickle first refers to it, so no callable from the
file ever runs. Tensors come back as C-contiguous `numpy.ndarray` copies with their dtype (bfloat16
is widened to float32 exactly, as numpy has no bfloat16), shape and strided view applied.

Checkpoints are downloads, so damage and malice are expected: every failure is a `PthError` naming
the file, and nothing is allocated that the file's bytes do not back. Each pickle is first scanned
opcode by opcode (at most `MAX_PICKLE_OPCODES`; declared lengths within the bytes left; memo
indices numbered as a pickler numbers them) and only then unpickled from memory; zip records must
be stored uncompressed and unencrypted (as torch writes them) and lie inside the archive; storage
element counts are checked against the bytes present before they are read, tensor views against
their storage, and the arrays returned total at most `4 x file size + 64 MiB` (bfloat16 widens,
tied tensors are copied apart).
"""

from __future__ import annotations

import _compat_pickle  # the stdlib's table of Python 2 -> 3 module renames
import collections
import io
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
from typing import Any, BinaryIO, Callable, Mapping, NamedTuple

import numpy as np

from jaxdissect import smallfile

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_TAR_MAGIC_OFFSET = 257  # "ustar" sits here in a tar header
MAX_PICKLE_OPCODES = 1 << 22  # a state dict of 1,000 tensors takes ~30,000
_MAX_LINE = 1 << 16  # text-protocol opcodes (GLOBAL names, decimal ints) are short lines
_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_OUTPUT_SLACK = 64 << 20  # bytes of arrays a file may yield beyond 4x its size (expanded views)


class PthError(ValueError):
  """A file that is not a readable, allowed PyTorch checkpoint; the message names the file."""


class _StorageType(NamedTuple):
  """Stand-in for a torch storage class: its name and how its raw bytes are laid out."""

  name: str
  dtype: np.dtype
  bfloat16: bool = False  # stored as uint16 bit patterns, widened to float32 on reading


class _StorageRef(NamedTuple):
  """A storage named by a persistent id; `view` is an (offset, size) slice in elements."""

  key: str
  kind: _StorageType
  numel: int
  view: tuple[int, int] | None = None


class _TensorRef(NamedTuple):
  """A tensor awaiting its storage's bytes (they may follow the pickle in the file)."""

  storage: _StorageRef
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]
  negate: bool = False
  conjugate: bool = False


_STORAGE_DTYPES = {
    "DoubleStorage": "<f8", "FloatStorage": "<f4", "HalfStorage": "<f2",
    "BFloat16Storage": "<u2", "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
    "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
    "ComplexFloatStorage": "<c8", "ComplexDoubleStorage": "<c16",
}


def _storage_types() -> dict[tuple[str, str], _StorageType]:
  """The torch storage classes that state dicts reference, as `(module, name)` globals."""
  types = {("torch", name): _StorageType(name, np.dtype(code), name == "BFloat16Storage")
           for name, code in _STORAGE_DTYPES.items()}
  untyped = _StorageType("UntypedStorage", np.dtype("u1"))  # raw bytes (a saved bare storage)
  types[("torch.storage", "UntypedStorage")] = types[("torch", "UntypedStorage")] = untyped
  return types


def _as_size(values: Any) -> tuple[int, ...]:
  """Stand-in for `torch.Size(values)`: a tuple of ints."""
  return tuple(_as_int("size", v) for v in values)


def _as_int(what: str, value: Any) -> int:
  """`value` if it is an int (bools excluded), else TypeError naming `what`."""
  if isinstance(value, bool) or not isinstance(value, int):
    raise TypeError(f"tensor {what} {value!r} is not an int")
  return value


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any,
                    metadata: Any = None) -> _TensorRef:
  """Stand-in for `torch._utils._rebuild_tensor`: records the view, checks its types."""
  if not isinstance(storage, _StorageRef):
    raise TypeError(f"tensor storage is a {type(storage).__name__}, not a persistent storage")
  size, stride = _as_size(size), _as_size(stride)
  if len(size) != len(stride):
    raise ValueError(f"tensor size {list(size)} and stride {list(stride)} differ in length")
  metadata = metadata or {}
  if not isinstance(metadata, Mapping):
    raise TypeError(f"tensor metadata {metadata!r} is not a dict")
  return _TensorRef(storage, _as_int("offset", offset), size, stride,
                    negate=bool(metadata.get("neg")), conjugate=bool(metadata.get("conj")))


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any,
                       backward_hooks: Any, metadata: Any = None) -> _TensorRef:
  """Stand-in for `torch._utils._rebuild_tensor_v2`; autograd fields are ignored."""
  del requires_grad, backward_hooks
  return _rebuild_tensor(storage, offset, size, stride, metadata)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any,
                       state: Any = None) -> Any:
  """Stand-in for `torch._utils._rebuild_parameter(_with_state)`: the parameter's data."""
  del requires_grad, backward_hooks, state
  if not isinstance(data, _TensorRef):
    raise TypeError(f"parameter data is a {type(data).__name__}, not a tensor")
  return data


# What each allowed global becomes. Justification: the rebuild functions, storage classes,
# OrderedDict (state dicts and autograd hook dicts) and torch.Size are exactly what
# `torch.save(module.state_dict())` and ordinary checkpoints (plain dicts of them) emit.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _as_size,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **_storage_types(),
}


def _fresh(fn: Callable[..., Any]) -> Callable[..., Any]:
  """A new callable per lookup, so a hostile BUILD opcode can only alter its own copy."""
  return lambda *args: fn(*args)


class _Unpickler(pickle.Unpickler):
  """Resolves globals only through `_ALLOWED` and storages to `_StorageRef`s it records."""

  def __init__(self, file: BinaryIO, path: str):
    super().__init__(file, encoding="utf-8")
    self._path = path
    self.storages: dict[str, _StorageRef] = {}

  def find_class(self, module: str, name: str) -> Any:
    module, name = _python3_name(module, name)
    target = _ALLOWED.get((module, name))
    if target is None:
      allowed = ", ".join(sorted(f"{m}.{n}" for m, n in _ALLOWED))
      raise PthError(f"{self._path}: refusing to unpickle global '{module}.{name}'; a PyTorch "
                     f"state dict needs only: {allowed}")
    is_function = callable(target) and not isinstance(target, type)
    return _fresh(target) if is_function else target

  def persistent_load(self, pid: Any) -> _StorageRef:
    ref = _storage_ref(pid)
    known = self.storages.setdefault(ref.key, ref)
    if known.kind != ref.kind:
      raise ValueError(f"storage {ref.key!r} is referenced as both {known.kind.name} and "
                       f"{ref.kind.name}")
    return ref


def _python3_name(module: str, name: str) -> tuple[str, str]:
  """The Python 3 name of a global written by Python 2 (e.g. `__builtin__` -> `builtins`)."""
  if (module, name) in _compat_pickle.NAME_MAPPING:
    return _compat_pickle.NAME_MAPPING[(module, name)]
  return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _storage_ref(pid: Any) -> _StorageRef:
  """Parses `('storage', type, key, location, numel[, view])` (zip: 5 fields; legacy: 6)."""
  if not isinstance(pid, tuple) or len(pid) not in (5, 6):
    raise ValueError(f"unsupported persistent id {pid!r}; expected a storage tuple")
  tag = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
  if tag != "storage":
    raise ValueError(f"unsupported persistent id of type {tag!r} (a pickled nn.Module class?); "
                     f"save the module's state_dict() instead")
  kind, key, numel = pid[1], pid[2], pid[4]
  if not isinstance(kind, _StorageType):
    raise TypeError(f"persistent id names storage type {kind!r}, not a torch storage class")
  if not isinstance(key, str):
    raise TypeError(f"storage key {key!r} is not a string")
  view = pid[5] if len(pid) == 6 else None
  if view is not None:
    if not isinstance(view, tuple) or len(view) != 3:
      raise ValueError(f"storage view {view!r} is not a (storage, offset, size) tuple")
    view = (_as_int("storage view offset", view[1]), _as_int("storage view size", view[2]))
  numel = _as_int("storage size", numel)
  if numel < 0:
    raise ValueError(f"storage {key!r} declares {numel} elements")
  return _StorageRef(key, kind, numel, view)


def load(path: str | os.PathLike) -> Any:
  """The object saved in a PyTorch checkpoint, with every tensor as a numpy array.

  Containers (dict, OrderedDict, list, tuple) and Python scalars, strings and None come back as
  they were pickled. Raises PthError naming `path` for anything that is not a readable checkpoint
  or that refers to a global outside the allow-list; sizes the file declares are checked against
  its bytes before anything is allocated (see the module docstring).
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      return _load_stream(f, os.fstat(f.fileno()).st_size, path)
  except OSError as e:
    raise PthError(f"{path}: cannot read the file: {e}") from e


def loads(data: bytes, name: str) -> Any:
  """`load` of a `torch.save` stream held in memory (e.g. the storage bytes that NVlabs network
  pickles embed); `name` says where it came from in error messages."""
  return _load_stream(io.BytesIO(data), len(data), name)


def _load_stream(f: BinaryIO, size: int, path: str) -> Any:
  """The body of `load`: `f` holds `size` bytes of a checkpoint named `path`."""
  try:
    head = f.read(_TAR_MAGIC_OFFSET + 5)
    f.seek(0)
    if head.startswith(_ZIP_MAGIC):
      obj, storages = _read_zip(f, path, size)
    elif head[_TAR_MAGIC_OFFSET:] == b"ustar":
      raise PthError(f"{path}: a tar-format checkpoint (torch < 0.1.10) is not supported")
    elif head.startswith(_PICKLE_PROTO):
      obj, storages = _read_legacy(f, path, size)
    else:
      raise PthError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a legacy "
                     f"pickle stream); it starts with {head[:8]!r}")
    return _resolve(obj, storages, {}, _Budget(4 * size + _OUTPUT_SLACK))
  except PthError:
    raise
  except OSError as e:
    raise PthError(f"{path}: cannot read the file: {e}") from e
  # zipfile raises NotImplementedError for unknown versions and methods and RuntimeError for
  # encryption; RecursionError (a RuntimeError) comes from absurdly nested containers.
  except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError, KeyError,
          IndexError, AttributeError, OverflowError, RuntimeError, NotImplementedError,
          struct.error, UnicodeDecodeError, zlib.error) as e:
    raise PthError(f"{path}: corrupt or unsupported PyTorch checkpoint: "
                   f"{type(e).__name__}: {smallfile.one_line(e, 300)}") from e


def load_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, np.ndarray]:
  """The flat `{name: array}` state dict in a checkpoint.

  With `key` (e.g. 'model'), the checkpoint must be a dict holding the state dict under it;
  without, a top-level `{'state_dict': ...}` is unwrapped. Nothing else is renamed or stripped.
  Raises PthError, saying what was found, unless the result maps strings to arrays.
  """
  path = os.fspath(path)
  obj = load(path)
  if key is not None:
    if not isinstance(obj, Mapping) or key not in obj:
      found = (f"keys {', '.join(map(repr, obj))}" if isinstance(obj, Mapping)
               else f"a {type(obj).__name__}")
      raise PthError(f"{path}: no entry {key!r} in the checkpoint; it holds {found}")
    obj = obj[key]
  elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
    obj = obj["state_dict"]
  return _check_state_dict(obj, path)


def _check_state_dict(obj: Any, path: str) -> dict[str, np.ndarray]:
  """`obj` as a plain dict if it maps strings to arrays, else PthError saying what it is."""
  if not isinstance(obj, Mapping):
    raise PthError(f"{path}: expected a state dict (a mapping of names to tensors), found a "
                   f"{type(obj).__name__}")
  for name, value in obj.items():
    if not isinstance(name, str) or not isinstance(value, np.ndarray):
      raise PthError(f"{path}: expected a state dict (a mapping of names to tensors), but entry "
                     f"{name!r} is {type(value).__name__}, not a tensor; keys: "
                     f"{', '.join(map(repr, obj))}")
  return dict(obj)


# --- The two file layouts ---------------------------------------------------------------------


def _read_zip(f: BinaryIO, path: str, size: int) -> tuple[Any, dict[str, np.ndarray]]:
  """Unpickles `<folder>/data.pkl`, then reads each referenced storage record once."""
  with zipfile.ZipFile(f) as zf:
    infos = {info.filename: info for info in zf.infolist()}
    names = set(infos)
    pickles = sorted(n for n in names if n.endswith("/data.pkl") and n.count("/") == 1)
    if not pickles:
      listed = ", ".join(repr(n)[:80] for n in sorted(names)[:10])
      raise PthError(f"{path}: a zip archive without a '<folder>/data.pkl' record, so not a "
                     f"torch.save file; records: {listed}")
    prefix = pickles[0][:-len("data.pkl")]
    if prefix + "constants.pkl" in names:
      raise PthError(f"{path}: a TorchScript archive (torch.jit.save); only torch.save files "
                     f"are supported")
    read = lambda name, most: _read_record(zf, infos[name], size, most, path)
    byteorder = "little"
    if prefix + "byteorder" in names:
      byteorder = read(prefix + "byteorder", 16).decode("ascii")
    if byteorder not in ("little", "big"):
      raise PthError(f"{path}: unknown byteorder record {byteorder!r}; expected 'little' or 'big'")
    pickled = read(prefix + "data.pkl", size)
    unpickler = _Unpickler(io.BytesIO(scan_pickle(io.BytesIO(pickled), len(pickled), path)),
                           path)
    obj = unpickler.load()
    storages = {}
    for key, ref in unpickler.storages.items():
      record = f"{prefix}data/{key}"
      if record not in names:
        raise PthError(f"{path}: missing storage record {record!r} for tensor storage {key!r}")
      need = ref.numel * ref.kind.dtype.itemsize
      if infos[record].file_size < need:
        raise PthError(f"{path}: storage {key!r} declares {ref.numel} elements ({need} bytes) "
                       f"but its record {record!r} holds {infos[record].file_size} bytes")
      storages[key] = _decode(read(record, need), ref, byteorder, f"record {record!r}")
  return obj, storages


def _read_record(zf: zipfile.ZipFile, info: zipfile.ZipInfo, size: int, most: int,
                 path: str) -> bytes:
  """The bytes of one zip record, after checking it is stored plainly, inside the archive."""
  what = f"{path}: record {info.filename!r}"
  if info.flag_bits & 0x1:
    raise PthError(f"{what} is encrypted; torch.save never encrypts")
  if info.compress_type != zipfile.ZIP_STORED:
    raise PthError(f"{what} is compressed (zip method {info.compress_type}); torch.save stores "
                   f"records uncompressed")
  if info.compress_size != info.file_size or info.header_offset + info.file_size > size:
    raise PthError(f"{what} declares {info.file_size} bytes at offset {info.header_offset}, "
                   f"which the {size}-byte archive cannot hold")
  if info.file_size > most:
    raise PthError(f"{what} holds {info.file_size} bytes, more than the {most} it may")
  return zf.read(info)


def _read_legacy(f: BinaryIO, path: str, size: int) -> tuple[Any, dict[str, np.ndarray]]:
  """Reads the pre-1.6 stream: header pickles, main pickle, key list, counted raw storages."""
  def unpickler() -> _Unpickler:
    return _Unpickler(io.BytesIO(scan_pickle(f, size, path)), path)

  if unpickler().load() != _LEGACY_MAGIC:
    raise PthError(f"{path}: a pickle, but not a PyTorch checkpoint (bad magic number)")
  version = unpickler().load()
  if version != _LEGACY_PROTOCOL:
    raise PthError(f"{path}: unsupported legacy protocol version {version!r}; expected "
                   f"{_LEGACY_PROTOCOL}")
  unpickler().load()  # sys_info: byte order and C type sizes of the saving machine
  main = unpickler()
  obj = main.load()
  keys = unpickler().load()
  if not isinstance(keys, list):
    raise PthError(f"{path}: expected the list of storage keys after the pickle, found a "
                   f"{type(keys).__name__}")
  storages = {}
  for key in keys:
    ref = main.storages.get(key) if isinstance(key, str) else None
    if ref is None:
      raise PthError(f"{path}: storage {key!r} is in the file but no tensor refers to it")
    (count,) = struct.unpack("<q", _read_exactly(f, size, 8, f"the size of storage {key!r}"))
    itemsize = ref.kind.dtype.itemsize
    data = _read_exactly(f, size, count * itemsize, f"storage {key!r} ({count} elements)")
    storages[key] = _decode(data, ref, "little", f"storage {key!r}")
  missing = sorted(set(main.storages) - set(storages))
  if missing:
    raise PthError(f"{path}: missing data for storage(s) {', '.join(map(repr, missing))}")
  return obj, storages


class _Bounded:
  """A read-only view of a file for the pickle scan: reads are cut to the bytes that are left
  and lines to `_MAX_LINE`, so a declared length never becomes an allocation."""

  def __init__(self, f: BinaryIO, size: int):
    self._f, self._size = f, size

  def left(self) -> int:
    return max(0, self._size - self._f.tell())

  def read(self, n: int = -1) -> bytes:
    left = self.left()
    return self._f.read(left if n < 0 else min(n, left))

  def readline(self) -> bytes:
    return self._f.readline(_MAX_LINE)

  def tell(self) -> int:
    return self._f.tell()

  def seek(self, offset: int) -> None:
    self._f.seek(offset)


def scan_pickle(file: BinaryIO, size: int, path: str) -> bytes:
  """The bytes of the one pickle starting at `file`'s position (`size`: the bytes `file` holds),
  read after a dry scan of its opcodes; PthError naming `path` when the scan refuses it.

  The C unpickler allocates what a length field or memo index says before looking at the data;
  the scan (pickletools, which reads what is there) refuses a length beyond the bytes left, a
  memo index a pickler would not have written, and more than MAX_PICKLE_OPCODES opcodes. Every
  reader of pickles from outside unpickles only what this returns.
  """
  f = _Bounded(file, size)
  start, puts = f.tell(), 0
  for count, (op, arg, pos) in enumerate(pickletools.genops(f)):
    if count >= MAX_PICKLE_OPCODES:
      raise PthError(f"{path}: the pickle at byte {start} has more than {MAX_PICKLE_OPCODES} "
                     f"opcodes; a state dict needs far fewer")
    if op.name in _MEMO_OPS:
      if not isinstance(arg, int) or not 0 <= arg <= puts:
        raise PthError(f"{path}: pickle memo index {arg!r} at byte {pos}; a pickler numbers "
                       f"them 0 .. {puts} here")
      puts += 1
    elif op.name == "MEMOIZE":
      puts += 1
    elif op.name == "FRAME" and arg > f.left():
      raise PthError(f"{path}: pickle frame of {arg} bytes at byte {pos} runs past the end")
  end = f.tell()
  f.seek(start)
  data = f.read(end - start)
  f.seek(end)
  return data


def _read_exactly(f: BinaryIO, size: int, n: int, what: str) -> bytes:
  """`n` bytes from `f` (which holds `size`), or EOFError naming `what` if it ends first."""
  if n < 0:
    raise ValueError(f"negative length {n} for {what}")
  left = size - f.tell()  # checked first: a bogus huge n is not allocated
  if n > left:
    raise EOFError(f"file ends inside {what}: {left} of {n} bytes")
  return f.read(n)


def _decode(data: bytes, ref: _StorageRef, byteorder: str, what: str) -> np.ndarray:
  """The storage's elements as a native-order 1-D array (bfloat16 widened to float32)."""
  dtype = ref.kind.dtype
  if len(data) < ref.numel * dtype.itemsize:
    raise EOFError(f"{what} has {len(data)} bytes, but storage {ref.key!r} needs "
                   f"{ref.numel} x {dtype.itemsize}")
  array = np.frombuffer(data, dtype.newbyteorder("<"), count=ref.numel)
  if byteorder == "big" and dtype.itemsize > 1:
    unit = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize  # complex: each half
    array = array.view(f"<u{unit}").byteswap().view(array.dtype)
  array = array.astype(dtype.newbyteorder("="), copy=False)
  if ref.kind.bfloat16:
    array = (array.astype(np.uint32) << 16).view(np.float32)
  return array


# --- From references to arrays ----------------------------------------------------------------


class _Budget:
  """Bytes of arrays one load may still produce; overlapping or broadcast views of a storage
  could otherwise turn a small file into any amount of memory."""

  def __init__(self, left: int):
    self.left = left

  def spend(self, nbytes: int, what: str) -> None:
    if nbytes > self.left:
      raise ValueError(f"{what} needs {nbytes} more bytes of arrays than the file's size "
                       f"justifies ({self.left} left)")
    self.left -= nbytes


def _resolve(obj: Any, storages: dict[str, np.ndarray], memo: dict[int, Any],
             budget: _Budget) -> Any:
  """`obj` with tensor and storage references replaced by arrays; shares and cycles kept."""
  if id(obj) in memo:
    return memo[id(obj)]
  if isinstance(obj, _TensorRef):
    out = memo[id(obj)] = _tensor(obj, storages, budget)
  elif isinstance(obj, _StorageRef):
    data = _storage(obj, storages)
    budget.spend(data.nbytes, f"storage {obj.key!r}")
    out = memo[id(obj)] = data.copy()
  elif isinstance(obj, dict):
    out = memo[id(obj)] = obj
    for k, v in list(obj.items()):
      obj[k] = _resolve(v, storages, memo, budget)
  elif isinstance(obj, list):
    out = memo[id(obj)] = obj
    obj[:] = [_resolve(v, storages, memo, budget) for v in obj]
  elif type(obj) is tuple:
    out = memo[id(obj)] = tuple(_resolve(v, storages, memo, budget) for v in obj)
  else:
    out = obj
  return out


def _storage(ref: _StorageRef, storages: dict[str, np.ndarray]) -> np.ndarray:
  """The elements a storage reference sees (its view slice, for legacy storage views)."""
  data = storages[ref.key]
  if ref.view is None:
    return data
  start, size = ref.view
  if start < 0 or size < 0 or start + size > data.size:
    raise ValueError(f"storage view [{start}, {start + size}) is outside storage {ref.key!r} of "
                     f"{data.size} elements")
  return data[start:start + size]


def _tensor(ref: _TensorRef, storages: dict[str, np.ndarray], budget: _Budget) -> np.ndarray:
  """A C-contiguous copy of the strided view a tensor reference describes, bounds-checked."""
  data = _storage(ref.storage, storages)
  size, stride, offset = ref.size, ref.stride, ref.offset
  if any(n < 0 for n in size):
    raise ValueError(f"tensor size {list(size)} has a negative dimension")
  numel = 1
  for n in size:
    numel *= n
  if numel == 0:
    if len(size) > 64:
      raise ValueError(f"tensor has {len(size)} dimensions; numpy allows at most 64")
    out = np.zeros(size, data.dtype)
  else:
    budget.spend(numel * data.itemsize, f"tensor of size {list(size)}")
    out = strided_copy(data, offset, size, stride, f"storage {ref.storage.key!r}")
  if ref.negate:
    out = -out
  if ref.conjugate:
    out = np.conj(out)
  return out


def strided_copy(data: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...],
                 what: str = "storage") -> np.ndarray:
  """A C-contiguous copy of the view of 1-D `data` that a tensor's offset, size and stride
  describe (at least one element); ValueError when the view reaches outside `data`."""
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if offset < 0 or min(stride, default=0) < 0 or last >= data.size:
    raise ValueError(f"tensor of size {list(size)}, stride {list(stride)} and offset {offset} "
                     f"reaches outside {what} of {data.size} elements")
  view = np.lib.stride_tricks.as_strided(data[offset:], size, [s * data.itemsize for s in stride],
                                         writeable=False)
  return view.copy(order="C")
