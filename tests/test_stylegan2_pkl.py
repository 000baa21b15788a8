"""NVlabs StyleGAN2-ADA `.pkl` snapshots: read without running anything, refused when hostile.

The snapshots pickle `torch_utils.persistence` objects that embed their module's source code.
Here a snapshot of the same layout is built without NVlabs' code: stand-in `torch_utils.
persistence` and `dnnlib.util` modules are put in `sys.modules` only while pickling, and each
network module pickles as `_reconstruct_persistent_obj({'type': 'class', 'module_src': ...,
'class_name': ..., 'state': <its __dict__>})`, its tensors as real torch tensors. The embedded
source would create a marker file if it were ever executed.
"""

import collections
import os
import pickle
import sys
import tracemalloc
import types

import numpy as np
import pytest

from jaxdissect import zoo
from ports import stylegan2 as sg
from ports import stylegan2_pkl

CFG = sg.config(16, z_dim=8, w_dim=8, channel_base=64, channel_max=8, mapping_layers=2,
                conv_clamp=0.5)
_BUFFERS = ("resample_filter", "noise_const", "w_avg")


def _class_name(path):
  last = path.rsplit(".", 1)[-1]
  if path == "":
    return "Generator"
  if last in ("mapping", "synthesis"):
    return last.capitalize() + "Network"
  if last.startswith("fc") or last == "affine":
    return "FullyConnectedLayer"
  if last.startswith("conv"):
    return "SynthesisLayer"
  return "ToRGBLayer" if last == "torgb" else "SynthesisBlock"


def _attributes(class_name):
  """The plain attributes the loader reads, as the NVlabs modules hold them."""
  return {"Generator": {"z_dim": CFG.z_dim, "c_dim": 0},
          "SynthesisBlock": {"architecture": "skip", "use_fp16": False},
          "SynthesisLayer": {"activation": "lrelu", "conv_clamp": 0.5,
                             "act_gain": np.float64(np.sqrt(2))},
          "ToRGBLayer": {"conv_clamp": 0.5, "weight_gain": np.float64(0.25)},
          "FullyConnectedLayer": {"activation": "lrelu", "bias_gain": 0.01,
                                  "weight_gain": np.float32(0.0035)},
          }.get(class_name, {})


def stand_in_modules():
  """`{name: module}`: `torch_utils.persistence` and `dnnlib.util` stand-ins that pickle can
  name, for the writer (also used by tests/fuzz_harness.py, in its own process)."""
  persistence = types.ModuleType("torch_utils.persistence")

  def _reconstruct_persistent_obj(meta):
    raise AssertionError("only pickle.dump refers to this stand-in")

  _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
  _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
  persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
  util = types.ModuleType("dnnlib.util")
  util.EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util",
                                             "__qualname__": "EasyDict"})
  return {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
          "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}


@pytest.fixture
def stand_ins(monkeypatch):
  """The stand-in modules in `sys.modules` for one test: `(persistence, util)`."""
  modules = stand_in_modules()
  for name, module in modules.items():
    monkeypatch.setitem(sys.modules, name, module)
  return modules["torch_utils.persistence"], modules["dnnlib.util"]


class _Persistent:
  """Pickles the way a `@persistent_class` instance does."""

  def __init__(self, reconstruct, meta):
    self.reconstruct, self.meta = reconstruct, meta

  def __reduce__(self):
    return self.reconstruct, (self.meta,)


def write_snapshot(path, sd, stand_ins, marker, g_classes=None):
  """An NVlabs-layout snapshot of generator state dict `sd` (numpy), its source a trap."""
  torch = pytest.importorskip("torch", reason="torch not installed (test extra)")
  persistence, util = stand_ins
  source = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
  mpaths = {""}  # every module's dotted path, '' for the generator
  for key in sd:
    parts = key.split(".")[:-1]
    mpaths.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
  nodes = {}
  for mpath in sorted(mpaths, key=lambda p: -p.count(".") - 1 if p else 1):  # children first
    name = (g_classes or {}).get(mpath, _class_name(mpath))
    params, buffers, modules = (collections.OrderedDict() for _ in range(3))
    prefix = mpath + "." if mpath else ""
    for key, value in sd.items():
      rest = key[len(prefix):] if key.startswith(prefix) else None
      if rest is not None and "." not in rest:
        t = torch.from_numpy(value.copy())
        if rest in _BUFFERS:
          buffers[rest] = t
        else:
          params[rest] = torch.nn.Parameter(t, requires_grad=False)
    for child in sorted(p for p in nodes if (p.rsplit(".", 1)[0] if "." in p else "") == mpath):
      modules[child.rsplit(".", 1)[-1]] = nodes[child]
    state = {"training": False, "_parameters": params, "_buffers": buffers,
             "_non_persistent_buffers_set": set(), "_modules": modules,
             "_forward_hooks": collections.OrderedDict(), **_attributes(name),
             "_init_kwargs": util.EasyDict(channel_max=8)}
    nodes[mpath] = _Persistent(persistence._reconstruct_persistent_obj, dict(
        type="class", version=6, module_src=source, class_name=name, state=state))
  disc = _Persistent(persistence._reconstruct_persistent_obj, dict(
      type="class", version=6, module_src=source, class_name="Discriminator",
      state={"_parameters": {"w": torch.ones(2, 3)[:, 1:]}, "_modules": {}}))
  data = dict(training_set_kwargs=util.EasyDict(path="x.zip", resolution=16),
              G=nodes[""], D=disc, G_ema=nodes[""], augment_pipe=None)
  with open(path, "wb") as f:
    pickle.dump(data, f)


@pytest.fixture
def snapshot(tmp_path, stand_ins):
  sd = sg.random_state_dict(CFG, 5)
  path, marker = tmp_path / "network-snapshot.pkl", tmp_path / "marker"
  write_snapshot(path, sd, stand_ins, marker)
  return path, marker, sd


def test_snapshot_loads_its_state_dict_without_running_its_source(snapshot):
  path, marker, sd = snapshot
  loaded, attrs = stylegan2_pkl.load_network(path)
  assert sorted(loaded) == sorted(sd)
  for key, value in sd.items():
    np.testing.assert_array_equal(loaded[key], value, err_msg=key)
  assert attrs["synthesis.b8.conv0"]["conv_clamp"] == 0.5
  assert attrs["synthesis.b8.conv0"]["class_name"] == "SynthesisLayer"
  assert not marker.exists()
  everything = stylegan2_pkl.load(path)
  assert everything["D"].class_name == "Discriminator"
  np.testing.assert_array_equal(everything["D"].state["_parameters"]["w"], np.ones((2, 2)))
  assert everything["training_set_kwargs"] == {"path": "x.zip", "resolution": 16}
  assert not marker.exists()


def test_snapshot_generator_and_spec(snapshot):
  path, marker, sd = snapshot
  gen = zoo.load_generator(f"stylegan2:{path}", ["truncation_psi=0.5"])
  ref = sg.from_state_dict(sd, conv_clamp=0.5, truncation_psi=0.5)
  assert gen.layers == ref.layers and gen.latent_shape == (8,)
  z = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
  np.testing.assert_array_equal(gen.apply_fn(gen.params, z)[0], ref.apply_fn(ref.params, z)[0])
  unclamped = sg.from_state_dict(sd, truncation_psi=0.5)  # the clamp came from the pickle:
  assert np.max(np.abs(unclamped.apply_fn(unclamped.params, z)[0])) > 2.0
  assert np.max(np.abs(gen.apply_fn(gen.params, z)[0])) <= 1.5 + 1e-6  # 3 toRGBs, each <= 0.5
  assert not marker.exists()


def test_unknown_module_class_is_refused(tmp_path, stand_ins):
  path = tmp_path / "odd.pkl"
  write_snapshot(path, sg.random_state_dict(CFG, 5), stand_ins, tmp_path / "marker",
                 g_classes={"synthesis.b8": "ResnetBlock"})
  with pytest.raises(stylegan2_pkl.PklError, match="class\\(es\\) ResnetBlock; expected only"):
    stylegan2_pkl.load_network(path)


class _Command:
  """The classic pickle payload: unpickling calls os.system(command)."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


def test_command_payload_is_refused_and_nothing_runs(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps({"G_ema": _Command(f"touch {marker}")}))
  with pytest.raises(stylegan2_pkl.PklError, match=r"refusing to unpickle global '(posix|os)"
                     r"\.system'"):
    stylegan2_pkl.load(path)
  assert not marker.exists()
  with pytest.raises(zoo.SpecError, match="the stylegan2 loader failed: PklError"):
    zoo.load_generator(f"stylegan2:{path}")
  assert not marker.exists()


def test_payload_inside_tensor_bytes_is_refused(tmp_path):
  """The bytes of `torch.storage._load_from_bytes` are a pickle too, and as guarded."""
  marker = tmp_path / "pwned"
  inner = pickle.dumps(_Command(f"touch {marker}"), protocol=2)
  outer = (b"\x80\x03ctorch.storage\n_load_from_bytes\nB" + len(inner).to_bytes(4, "little")
           + inner + b"\x85R.")
  path = tmp_path / "evil.pkl"
  path.write_bytes(outer)
  with pytest.raises(stylegan2_pkl.PklError, match="refusing to unpickle global"):
    stylegan2_pkl.load(path)
  assert not marker.exists()


@pytest.mark.parametrize("payload, match", [
    (b"\x80\x02cdnnlib.tflib.network\nNetwork\n)\x81.", "'dnnlib.tflib.network.Network'"),
    (b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1;\x85R.", "'builtins.eval'"),
    (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R.", "not a bool/int/uint"),
    (b"\x80\x02ctorch_utils.persistence\n_reconstruct_persistent_obj\n}\x85R.",
     "metadata is not a"),
    (b"PK\x03\x04junk", "not a pickle"),
])
def test_other_refusals(tmp_path, payload, match):
  path = tmp_path / "x.pkl"
  path.write_bytes(payload)
  with pytest.raises(stylegan2_pkl.PklError, match=match):
    stylegan2_pkl.load(path)


def test_declared_huge_memo_index_is_refused_before_allocation(tmp_path):
  """LONG_BINPUT at memo index 2**32 - 1 in an 11-byte file (the C unpickler would size its memo
  for it first): the opcode scan refuses it unread."""
  path = tmp_path / "huge.pkl"
  path.write_bytes(b"\x80\x02Nr\xff\xff\xff\xff.")
  tracemalloc.start()
  try:
    with pytest.raises(stylegan2_pkl.PklError, match=r"huge.pkl: pickle memo index 4294967295"):
      stylegan2_pkl.load(path)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 16 << 20, peak
