"""ports.pth: the torch-free checkpoint reader.

The first part needs no torch: a small writer below emits both on-disk layouts the way
`torch.save` does (facts from torch/serialization.py: zip records `<folder>/data.pkl`,
`<folder>/data/<key>`, `<folder>/byteorder`; legacy stream of magic, protocol 1001, sys_info,
main pickle, sorted key list, then per storage an int64 element count and the raw bytes; persistent
ids `('storage', <torch.XStorage>, key, location, numel[, view])`; tensors reduced through
`torch._utils._rebuild_tensor_v2`). The second part checks files written by torch itself.
"""

import collections
import importlib.util
import io
import os
import pickle
import re
import struct
import zipfile

import numpy as np
import pytest

from ports import pth

# --- A torch-free writer of torch-format files --------------------------------------------------


class Global:
  """A reference to `module.name`, pickled as a GLOBAL opcode (the target need not exist)."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):  # pickle insists that reduce functions be callable
    raise AssertionError("only pickled, never called")


class Storage:
  """A torch storage: `raw` holds its elements (for bfloat16: the uint16 bit patterns)."""

  def __init__(self, key, type_name, raw):
    self.key, self.type_name, self.raw = key, type_name, np.ascontiguousarray(raw).ravel()


class Tensor:
  """A tensor viewing `storage`; pickles as torch does, via `_rebuild_tensor_v2`."""

  def __init__(self, storage, offset, size, stride, metadata=None):
    self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())
    if metadata:
      self.args += (metadata,)

  def __reduce__(self):
    return Global("torch._utils", "_rebuild_tensor_v2"), self.args


class Evil:
  """An object whose unpickling would call `fn(*args)`."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


class _TorchLikePickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch we extend
  dispatch = dict(pickle._Pickler.dispatch)

  def __init__(self, file, legacy):
    super().__init__(file, protocol=2)
    self.legacy, self.storages = legacy, {}

  def save_global_ref(self, obj):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

  dispatch[Global] = save_global_ref

  def persistent_id(self, obj):
    if not isinstance(obj, Storage):
      return None
    self.storages[obj.key] = obj
    pid = ("storage", Global("torch", obj.type_name), obj.key, "cpu", obj.raw.size)
    return pid + (None,) if self.legacy else pid


def _dumps(obj, legacy):
  buf = io.BytesIO()
  pickler = _TorchLikePickler(buf, legacy)
  pickler.dump(obj)
  return buf.getvalue(), pickler.storages


def _raw_bytes(raw, byteorder="little"):
  code = "<" if byteorder == "little" else ">"
  return raw.astype(raw.dtype.newbyteorder(code)).tobytes()


def write_zip(path, obj, folder="archive", byteorder="little"):
  data, storages = _dumps(obj, legacy=False)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr(f"{folder}/data.pkl", data)
    zf.writestr(f"{folder}/byteorder", byteorder)
    for key, s in storages.items():
      zf.writestr(f"{folder}/data/{key}", _raw_bytes(s.raw, byteorder))
    zf.writestr(f"{folder}/version", "3\n")


def write_state_dict(path, sd):
  """`sd` (float32 arrays) as a zip-format `torch.save` file, written without torch."""
  obj = collections.OrderedDict()
  for i, (key, value) in enumerate(sd.items()):
    a = np.ascontiguousarray(value, np.float32)
    storage = Storage(str(i), "FloatStorage", a)
    obj[key] = Tensor(storage, 0, a.shape, tuple(s // a.itemsize for s in a.strides))
  write_zip(path, obj)


def write_proggan(path, sizes, seed=0):
  """A ProgGAN of channel list `sizes` in the netdissect key layout, random weights and biases,
  saved as a torch file at `path` (no torch needed); returns its state dict."""
  from ports import proggan  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  sd = {}
  for name, shape in proggan.torch_weight_shapes(sizes).items():
    sd[f"{name}.conv.weight"] = rng.standard_normal(shape).astype(np.float32)
    sd[f"{name}.wscale.b"] = (0.1 * rng.standard_normal(shape[0])).astype(np.float32)
  write_state_dict(path, sd)
  return sd


def write_legacy(path, obj):
  data, storages = _dumps(obj, legacy=True)
  sys_info = {"protocol_version": 1001, "little_endian": True,
              "type_sizes": {"short": 2, "int": 4, "long": 4}}
  with open(path, "wb") as f:
    for header in (0x1950A86A20F9469CFC6C, 1001, sys_info):
      pickle.dump(header, f, protocol=2)
    f.write(data)
    keys = sorted(storages)
    pickle.dump(keys, f, protocol=2)
    for key in keys:
      f.write(struct.pack("<q", storages[key].raw.size) + _raw_bytes(storages[key].raw))


WRITERS = {"zip": write_zip, "legacy": write_legacy}


def _bf16_bits(values):
  """bfloat16 bit patterns of float32 values whose low 16 bits are zero (exact)."""
  bits = np.asarray(values, np.float32).view(np.uint32)
  assert not np.any(bits & 0xFFFF)
  return (bits >> 16).astype(np.uint16)


def _fixture():
  """A checkpoint exercising dtypes, views, shared storage, 0-d and empty tensors, containers."""
  base = np.arange(12, dtype=np.float32) * 0.5 - 2
  shared = Storage("0", "FloatStorage", base)
  bf16 = [1.5, -2.25, 0.0, 2.0 ** 100, -(2.0 ** -100), 7.0]
  obj = {
      "state_dict": collections.OrderedDict([
          ("w", Tensor(shared, 0, (3, 4), (4, 1))),
          ("view", Tensor(shared, 5, (2, 2), (4, 2))),  # offset 5, strides (4, 2)
          ("transposed", Tensor(shared, 0, (4, 3), (1, 4))),
          ("half", Tensor(Storage("1", "HalfStorage", np.float16([0.5, -1, 65504])), 0, (3,),
                          (1,))),
          ("bf16", Tensor(Storage("2", "BFloat16Storage", _bf16_bits(bf16)), 0, (2, 3), (3, 1))),
          ("long", Tensor(Storage("3", "LongStorage", np.int64([-(2 ** 40), 7])), 1, (), ())),
          ("mask", Tensor(Storage("4", "BoolStorage", np.array([True, False, True])), 0, (3,),
                          (1,))),
          ("bytes", Tensor(Storage("5", "ByteStorage", np.uint8([0, 255])), 0, (2,), (1,))),
          ("double", Tensor(Storage("6", "DoubleStorage", np.float64([np.pi])), 0, (1, 1),
                            (1, 1))),
          ("empty", Tensor(Storage("7", "IntStorage", np.int32([])), 0, (0, 5), (5, 1))),
          ("neg", Tensor(Storage("8", "FloatStorage", np.float32([1, -2])), 0, (2,), (1,),
                         {"neg": True})),
      ]),
      "epoch": 7, "lr": 1e-3, "name": "proggan", "flags": [True, None, (1, "two", 3.0)],
  }
  expected = {
      "w": base.reshape(3, 4), "view": np.float32([[0.5, 1.5], [2.5, 3.5]]),
      "transposed": base.reshape(3, 4).T, "half": np.float16([0.5, -1, 65504]),
      "bf16": np.float32(bf16).reshape(2, 3), "long": np.array(7, np.int64),
      "mask": np.array([True, False, True]), "bytes": np.uint8([0, 255]),
      "double": np.float64([[np.pi]]), "empty": np.zeros((0, 5), np.int32),
      "neg": np.float32([-1, 2]),
  }
  return obj, expected


def _check_arrays(found, expected):
  assert list(found) == list(expected)
  for name, want in expected.items():
    got = found[name]
    assert isinstance(got, np.ndarray), name
    assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, got.shape)
    assert np.array_equal(got, want), (name, got, want)
    assert got.flags.c_contiguous and got.flags.writeable, name


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_round_trip_of_hand_written_files(tmp_path, fmt):
  obj, expected = _fixture()
  path = tmp_path / f"ckpt-{fmt}.pth"
  WRITERS[fmt](path, obj)
  loaded = pth.load(path)
  assert isinstance(loaded["state_dict"], collections.OrderedDict)
  _check_arrays(loaded["state_dict"], expected)
  assert loaded["epoch"] == 7 and loaded["lr"] == 1e-3 and loaded["name"] == "proggan"
  assert loaded["flags"] == [True, None, (1, "two", 3.0)]
  assert not np.shares_memory(loaded["state_dict"]["w"], loaded["state_dict"]["view"])
  _check_arrays(pth.load_state_dict(str(path)), expected)  # unwraps {'state_dict': ...}


def test_zip_any_folder_name_and_big_endian_storages(tmp_path):
  obj, expected = _fixture()
  path = tmp_path / "big.pth"
  write_zip(path, obj, folder="my_model-v2", byteorder="big")
  _check_arrays(pth.load_state_dict(path), expected)


def test_bare_storage_becomes_a_flat_array(tmp_path):
  path = tmp_path / "storage.pth"
  write_zip(path, [Storage("0", "LongStorage", np.int64([3, 1, 2]))])
  (found,) = pth.load(path)
  assert found.dtype == np.int64 and list(found) == [3, 1, 2]


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("target,name", [
    (os.system, f"{os.system.__module__}.system"),
    (eval, "builtins.eval"),
    (Global("subprocess", "Popen"), "subprocess.Popen"),
])
def test_disallowed_global_is_refused_before_it_runs(tmp_path, fmt, target, name):
  marker = tmp_path / "pwned"
  payload = (f"touch {marker}",) if target is not eval else (f"open({str(marker)!r}, 'w')",)
  obj = {"w": Tensor(Storage("0", "FloatStorage", np.float32([1])), 0, (1,), (1,)),
         "evil": Evil(target, *payload)}
  path = tmp_path / "evil.pth"
  WRITERS[fmt](path, obj)
  with pytest.raises(pth.PthError, match=re.escape(str(path)) + f".*'{name}'") as info:
    pth.load(path)
  assert "torch._utils._rebuild_tensor_v2" in str(info.value)  # says what would be allowed
  assert not marker.exists()


def test_module_class_global_is_refused(tmp_path):
  path = tmp_path / "module.pth"
  write_zip(path, {"model": Evil(Global("__main__", "Generator"))})
  with pytest.raises(pth.PthError, match="'__main__.Generator'"):
    pth.load(path)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_truncated_file(tmp_path, fmt):
  obj, _ = _fixture()
  path = tmp_path / f"cut-{fmt}.pth"
  WRITERS[fmt](path, obj)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(pth.PthError, match=re.escape(str(path))):
    pth.load(path)


def test_legacy_file_cut_inside_the_last_storage(tmp_path):
  obj, _ = _fixture()
  path = tmp_path / "cut.pth"
  write_legacy(path, obj)
  path.write_bytes(path.read_bytes()[:-3])
  with pytest.raises(pth.PthError, match="file ends inside storage"):
    pth.load(path)


@pytest.mark.parametrize("content", [np.random.default_rng(0).bytes(4096), b"", b"hello",
                                     pickle.dumps({"a": 1}, protocol=2)])
def test_not_a_torch_file(tmp_path, content):
  path = tmp_path / "junk.pth"
  path.write_bytes(content)
  with pytest.raises(pth.PthError, match=re.escape(str(path))):
    pth.load(path)


def test_missing_file():
  with pytest.raises(pth.PthError, match="cannot read"):
    pth.load("/nonexistent/weights.pth")


def test_zip_without_data_pkl_and_missing_storage_record(tmp_path):
  path = tmp_path / "plain.zip"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("readme.txt", "hi")
  with pytest.raises(pth.PthError, match="data.pkl"):
    pth.load(path)
  obj, _ = _fixture()
  path = tmp_path / "missing.pth"
  write_zip(path, obj)
  with zipfile.ZipFile(path) as zf:
    records = {n: zf.read(n) for n in zf.namelist() if n != "archive/data/3"}
  with zipfile.ZipFile(path, "w") as zf:
    for name, data in records.items():
      zf.writestr(name, data)
  with pytest.raises(pth.PthError, match="missing storage record 'archive/data/3'"):
    pth.load(path)


def test_view_outside_its_storage_is_refused(tmp_path):
  path = tmp_path / "oob.pth"
  write_zip(path, {"w": Tensor(Storage("0", "FloatStorage", np.float32([1, 2, 3])), 1, (2, 2),
                               (2, 1))})
  with pytest.raises(pth.PthError, match="outside storage '0' of 3 elements"):
    pth.load(path)


def test_load_state_dict_rejects_what_is_not_a_state_dict(tmp_path):
  t = Tensor(Storage("0", "FloatStorage", np.float32([1, 2])), 0, (2,), (1,))
  cases = {"list": ([t, t], "found a list"),
           "scalar": ({"w": t, "step": 3}, "entry 'step' is int, not a tensor"),
           "nested": ({"model": {"w": t}}, "entry 'model' is dict, not a tensor")}
  for name, (obj, message) in cases.items():
    path = tmp_path / f"{name}.pth"
    write_zip(path, obj)
    with pytest.raises(pth.PthError, match=message):
      pth.load_state_dict(path)
  found = pth.load_state_dict(tmp_path / "nested.pth", key="model")
  assert list(found) == ["w"] and np.array_equal(found["w"], np.float32([1, 2]))
  with pytest.raises(pth.PthError, match="no entry 'ema'.*keys 'model'"):
    pth.load_state_dict(tmp_path / "nested.pth", key="ema")


def _gan_face_weights():
  spec = importlib.util.find_spec("gan_face_generate")  # locate without importing (it needs torch)
  path = spec and os.path.join(os.path.dirname(spec.origin), "weights.tar")
  if not path or not os.path.exists(path):
    pytest.skip("gan_face_generate (parity extra) not installed")
  return path


def test_reads_gan_face_generate_weights():
  ckpt = pth.load(_gan_face_weights())
  assert list(ckpt) == ["netG_state_dict"]
  sd = pth.load_state_dict(_gan_face_weights(), key="netG_state_dict")
  assert len(sd) == 25
  assert sd["main.0.weight"].shape == (100, 512, 4, 4) and sd["main.0.weight"].dtype == np.float32
  assert sd["main.12.weight"].shape == (64, 3, 4, 4)
  assert sd["main.1.num_batches_tracked"].shape == () and sd["main.1.num_batches_tracked"].dtype \
      == np.int64


# --- Against torch itself -----------------------------------------------------------------------


def _torch():
  return pytest.importorskip("torch", reason="torch not installed (parity extra)")


def _torch_state_dict(torch):
  g = torch.Generator().manual_seed(0)
  base = torch.randn(5, 6, generator=g)
  complex_base = torch.randn(3, generator=g, dtype=torch.complex64)
  return collections.OrderedDict([
      ("f32", torch.randn(3, 4, generator=g)),
      ("f16", torch.randn(7, generator=g).half()),
      ("bf16", torch.randn(2, 5, generator=g).bfloat16()),
      ("f64", torch.randn(2, generator=g, dtype=torch.float64)),
      ("i64", torch.randint(-2 ** 40, 2 ** 40, (4,), generator=g)),
      ("i32", torch.randint(-1000, 1000, (2, 2), generator=g, dtype=torch.int32)),
      ("i16", torch.tensor([-7, 300], dtype=torch.int16)),
      ("i8", torch.tensor([-128, 127], dtype=torch.int8)),
      ("u8", torch.tensor([0, 255], dtype=torch.uint8)),
      ("bool", torch.randn(6, generator=g) > 0),
      ("base", base),
      ("view", base[1:, ::2]),  # offset and strides into base's storage
      ("tail", base.view(-1)[7:]),  # shares base's storage
      ("transposed", base.t()),
      ("scalar", torch.tensor(2.5)),
      ("empty", torch.zeros(0, 3)),
      ("param", torch.nn.Parameter(torch.randn(3, generator=g))),
      ("neg", torch._neg_view(torch.randn(3, generator=g))),
      ("c64", complex_base),
      ("conj", complex_base.conj()),
  ])


def _numpy(torch, t):
  t = t.detach().resolve_neg().resolve_conj()
  return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_matches_torch_save(tmp_path, zip_format):
  torch = _torch()
  sd = _torch_state_dict(torch)
  path = tmp_path / "torch.pth"
  torch.save({"state_dict": sd, "step": 11}, path, _use_new_zipfile_serialization=zip_format)
  if not zip_format:
    assert not zipfile.is_zipfile(path)
  loaded = pth.load(path)
  assert loaded["step"] == 11
  found = pth.load_state_dict(path)
  expected = {name: _numpy(torch, t) for name, t in sd.items()}
  _check_arrays(found, expected)
  assert found["bf16"].dtype == np.float32


def test_gan_face_generate_weights_match_torch_load():
  torch = _torch()
  path = _gan_face_weights()
  ours = pth.load_state_dict(path, key="netG_state_dict")
  theirs = torch.load(path, map_location="cpu", weights_only=True)["netG_state_dict"]
  _check_arrays(ours, {name: t.numpy() for name, t in theirs.items()})
