"""Reads NVlabs StyleGAN2-ADA `.pkl` snapshots into numpy without running any code from the file.

The official snapshots (`network-snapshot-*.pkl`, the published `ffhq.pkl`...) are plain pickles
of a dict `{'G': ..., 'D': ..., 'G_ema': ..., 'augment_pipe': ..., 'training_set_kwargs': ...}`
whose networks are `torch_utils.persistence` objects: each one pickles as a call of
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, where `meta` holds the *source code*
of the module defining its class, the class name and the module's `__dict__`. Loading one with
`pickle.load` executes that source (and whatever else the pickle names). Here nothing from the
file runs: unpickling goes through an allow-list of stand-ins written in this module.

  * `_reconstruct_persistent_obj(meta)` becomes a `Persistent(class_name, state)` record; the
    embedded source is never compiled, executed or even kept.
  * Tensors pickle as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` (and
    `_rebuild_parameter` around them), where each storage is `torch.storage._load_from_bytes(b)`
    with `b` a small `torch.save` stream of that storage (legacy or zip layout); those bytes are
    read by `ports.pth` (its own allow-list and size checks).
  * Plain containers: `collections.OrderedDict`, `builtins.set` / `frozenset`, `dnnlib`'s
    `EasyDict` (an inert dict subclass here), and numpy numeric scalars (`numpy.dtype` of a
    bool/int/uint/float/complex type code, `numpy.core.multiarray.scalar` of its raw bytes), which
    the modules' attributes (`weight_gain`...) are.
Any other global (`os.system`, `builtins.eval`, a TensorFlow-era `dnnlib.tflib` network...) is
refused, naming it, when the pickle first refers to it. Before unpickling, the pickle's opcodes
are scanned as `ports.pth` scans its own (`pth.scan_pickle`), so no declared length becomes an
allocation. Each allowed callable is handed out as a
fresh wrapper or subclass, so a hostile BUILD opcode cannot alter this module's objects.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from ports import pth

_NUMPY_CODE = re.compile(r"^[biufc]\d{0,2}$|^\?$")

# The classes a stylegan2-ada-pytorch generator is built from (`training/networks.py`).
GENERATOR_CLASSES = frozenset({
    "Generator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer",
    "ToRGBLayer", "FullyConnectedLayer", "Conv2dLayer"})


class PklError(ValueError):
  """A file that is not a readable, allowed NVlabs network pickle; the message names the file."""


class Persistent(NamedTuple):
  """A `torch_utils.persistence` object, as data: its class name and its `__dict__`."""

  class_name: str
  state: dict[str, Any]


class _Refused(Exception):
  """A global outside the allow-list (kept apart so no handler can turn it into data)."""


# --- Stand-ins for the allowed globals ---------------------------------------------------------


def _reconstruct(meta: Any) -> Persistent:
  """Stand-in for `_reconstruct_persistent_obj(meta)`: the class name and state, no source."""
  if not isinstance(meta, dict) or meta.get("type") != "class":
    raise ValueError("persistent object metadata is not a {'type': 'class', ...} dict")
  name, state = meta.get("class_name"), meta.get("state")
  if not isinstance(name, str) or not name.isidentifier():
    raise ValueError(f"persistent object class name {name!r} is not an identifier")
  if state is not None and not isinstance(state, dict):
    raise ValueError(f"state of persistent {name} is a {type(state).__name__}, not a dict")
  return Persistent(name, dict(state or {}))


def _ints(what: str, values: Any) -> tuple[int, ...]:
  if not isinstance(values, (tuple, list)) or not all(
      isinstance(v, int) and not isinstance(v, bool) for v in values):
    raise TypeError(f"tensor {what} {values!r} is not a tuple of ints")
  return tuple(values)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> np.ndarray:
  """Stand-in for `torch._utils._rebuild_tensor(_v2)`: a C-contiguous copy of the view."""
  if not isinstance(storage, _Storage):
    raise TypeError(f"tensor storage is a {type(storage).__name__}, not a storage")
  data = storage.data
  (offset,), size, stride = _ints("offset", (offset,)), _ints("size", size), _ints("stride", stride)
  if len(size) != len(stride) or min(size, default=0) < 0:
    raise ValueError(f"tensor size {list(size)} / stride {list(stride)} are inconsistent")
  if 0 in size:
    return np.zeros(size, data.dtype)
  return pth.strided_copy(data, offset, size, stride, "its storage")


def _rebuild_parameter(data: Any, *_: Any) -> np.ndarray:
  """Stand-in for `torch._utils._rebuild_parameter(_with_state)`: the parameter's data."""
  if not isinstance(data, np.ndarray):
    raise TypeError(f"parameter data is a {type(data).__name__}, not a tensor")
  return data


class _Storage(NamedTuple):
  """A storage's elements (1-D), as `_load_from_bytes` decoded them."""

  data: np.ndarray


class _EasyDict(dict):
  """Stand-in for `dnnlib.EasyDict`: a plain dict (attribute access is not needed)."""

  def __setstate__(self, state: Any) -> None:
    del state  # a dict subclass's (empty) instance __dict__


class _DType:
  """Stand-in for `numpy.dtype(code, align, copy)` of a numeric type, awaiting its byte order."""

  def __init__(self, code: Any, align: Any = False, copy: Any = True):
    del align, copy
    if not isinstance(code, str) or not _NUMPY_CODE.match(code):
      raise ValueError(f"numpy dtype {code!r} is not a bool/int/uint/float/complex type")
    self.code, self.order = code, "|"

  def __setstate__(self, state: Any) -> None:
    if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
      raise ValueError(f"unexpected numpy dtype state {state!r}")
    self.order = state[1]

  def dtype(self) -> np.dtype:
    order = "" if self.order in ("|", "=") else self.order
    return np.dtype(order + self.code)


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
  """Stand-in for `numpy.core.multiarray.scalar(dtype, bytes)` of a numeric dtype."""
  if not isinstance(dtype, _DType) or not isinstance(data, bytes):
    raise TypeError("numpy scalar of something other than a numeric dtype and its bytes")
  dt = dtype.dtype()
  if len(data) != dt.itemsize:
    raise ValueError(f"numpy scalar of dtype {dt} has {len(data)} bytes")
  return np.frombuffer(data, dt)[0].astype(dt.newbyteorder("="))


def _fresh(fn: Callable[..., Any]) -> Callable[..., Any]:
  """A new callable per lookup, so a hostile BUILD opcode can only alter its own copy."""
  return lambda *args: fn(*args)


def _subclass(cls: type) -> type:
  """A new subclass per lookup, for the same reason (BUILD and NEWOBJ need a class)."""
  return type(cls.__name__, (cls,), {})


def _load_from_bytes(data: Any) -> _Storage:
  """Stand-in for `torch.storage._load_from_bytes`: the `torch.save` stream of one storage, read
  by `ports.pth` (its allow-list, its size checks)."""
  if not isinstance(data, bytes):
    raise TypeError(f"storage bytes are a {type(data).__name__}")
  elements = pth.loads(data, "tensor bytes")
  if not isinstance(elements, np.ndarray) or elements.ndim != 1:
    raise ValueError("tensor bytes hold something other than one storage")
  return _Storage(elements)


_FUNCTIONS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): lambda values: _ints("size", tuple(values)),
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}
_CLASSES: dict[tuple[str, str], type] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): _DType,
}


class _Unpickler(pickle.Unpickler):
  """The network pickle's unpickler: globals only through the allow-lists above."""

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _FUNCTIONS:
      return _fresh(_FUNCTIONS[module, name])
    if (module, name) in _CLASSES:
      cls = _CLASSES[module, name]
      return cls if cls is collections.OrderedDict else _subclass(cls)
    raise _Refused(f"{module}.{name}")


# --- Public API --------------------------------------------------------------------------------


def load(path: str | os.PathLike) -> Any:
  """The object in an NVlabs network pickle, with persistent objects as `Persistent` records and
  tensors as numpy arrays. Raises PklError naming `path` for anything unreadable or refused."""
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      head = f.read(4)
      f.seek(0)
      if head.startswith(b"PK\x03\x04") or not head.startswith(b"\x80"):
        raise PklError(f"{path}: not a pickle (it starts with {head!r}); NVlabs network "
                       f"snapshots are plain pickles, torch.save files are read by ports.pth")
      checked = pth.scan_pickle(f, os.fstat(f.fileno()).st_size, path)
      return _Unpickler(io.BytesIO(checked)).load()
  except PklError:
    raise
  except pth.PthError as e:  # the scan (its message names `path`), or a storage stream's
    text = str(e)
    raise PklError(text if text.startswith(path) else f"{path}: {text}") from None
  except _Refused as e:
    raise PklError(f"{path}: refusing to unpickle global '{e}'; an NVlabs network pickle needs "
                   f"only: {', '.join(sorted(f'{m}.{n}' for m, n in [*_FUNCTIONS, *_CLASSES]))}"
                   f" (and torch storage classes inside tensor bytes)") from None
  except OSError as e:
    raise PklError(f"{path}: cannot read the file: {e}") from e
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
          AttributeError, OverflowError, RecursionError, UnicodeDecodeError, MemoryError) as e:
    raise PklError(f"{path}: corrupt or unsupported network pickle: "
                   f"{type(e).__name__}: {e}") from e


def state_dict(obj: Persistent, prefix: str = "") -> dict[str, np.ndarray]:
  """The `module.state_dict()` of a persistent torch module: parameters and persistent buffers,
  recursively, under dotted names."""
  state = obj.state
  out: dict[str, np.ndarray] = {}
  skip = state.get("_non_persistent_buffers_set") or set()
  for field in ("_parameters", "_buffers"):
    for name, value in (state.get(field) or {}).items():
      if value is None or (field == "_buffers" and name in skip):
        continue
      if not isinstance(value, np.ndarray):
        raise PklError(f"{prefix}{name} of {obj.class_name} is a {type(value).__name__}, "
                       f"not a tensor")
      out[prefix + name] = value
  for name, module in (state.get("_modules") or {}).items():
    if module is None:
      continue
    if not isinstance(module, Persistent):
      raise PklError(f"submodule {prefix}{name} is a {type(module).__name__}, not a "
                     f"persistent network module")
    out.update(state_dict(module, f"{prefix}{name}."))
  return out


def attributes(obj: Persistent, prefix: str = "") -> dict[str, dict[str, Any]]:
  """Each module's plain attributes (`conv_clamp`, `architecture`, `weight_gain`...), keyed by its
  dotted path ('' for `obj`), with its `class_name`; numpy scalars become Python numbers."""
  attrs: dict[str, Any] = {"class_name": obj.class_name}
  for k, v in obj.state.items():
    if isinstance(v, np.generic):
      v = v.item()
    if not k.startswith("_") and (v is None or isinstance(v, (bool, int, float, str))):
      attrs[k] = v
  out = {prefix.rstrip("."): attrs}
  for name, module in (obj.state.get("_modules") or {}).items():
    if isinstance(module, Persistent):
      out.update(attributes(module, f"{prefix}{name}."))
  return out


def load_network(path: str | os.PathLike, key: str = "G_ema",
                 classes: frozenset[str] = GENERATOR_CLASSES
                 ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
  """`(state_dict, attributes)` of the network `key` in a snapshot (default the EMA generator).

  Every module of that network must be one of `classes` (by name); its embedded source is
  ignored, so a snapshot whose code was modified loads as the architecture this port knows.
  Raises PklError naming the file.
  """
  path = os.fspath(path)
  obj = load(path)
  if not isinstance(obj, Mapping) or key not in obj:
    found = (f"keys {', '.join(map(repr, obj))}" if isinstance(obj, Mapping)
             else f"a {type(obj).__name__}")
    raise PklError(f"{path}: no entry {key!r} in the pickle; it holds {found}")
  net = obj[key]
  if not isinstance(net, Persistent):
    raise PklError(f"{path}: {key!r} is a {type(net).__name__}, not a persistent network")
  attrs = attributes(net)
  unknown = sorted({a["class_name"] for a in attrs.values()} - classes)
  if unknown:
    raise PklError(f"{path}: {key!r} contains module class(es) {', '.join(unknown)}; expected "
                   f"only {', '.join(sorted(classes))}")
  return state_dict(net), attrs
