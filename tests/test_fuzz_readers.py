"""Every reader of outside files fails only with its own error, quickly, within a memory cap.

Damaged downloads and hostile files must never surface as MemoryError, NotImplementedError or a
KeyError deep inside a script. For each format, a child process (tests/fuzz_harness.py) writes
small valid files, damages each of many copies (bit flips, truncation, splices, deletions, huge
numbers where sizes live; record-, chunk- and value-aware damage so checks behind CRCs and
parsers are reached) and reads them under an address-space cap (RLIMIT_AS: the warm process plus
256 MiB, 512 for Orbax) and a per-case timer. The only allowed outcomes are a load or the reader's
own error (not one that merely wraps a MemoryError).
Four child processes (torch files; the other files; Orbax; the StyleGAN2 .pkl and TFLite
formats, which need the test extras) keep the stage to ~40 s on 2 cores.
"""

import json
import os
import pickle
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from ports import pth
from test_pth import Storage, Tensor, write_legacy, write_zip

_HERE = os.path.dirname(os.path.abspath(__file__))
_GROUPS = {  # child process -> (formats, damaged copies per format, address-space headroom MiB)
    "torch": (("pth-zip", "pth-legacy"), 3000, 256),
    "files": (("npy", "npz", "png-image", "jpeg-image", "png-mask", "dissect-json", "units-json",
               "ablation-json", "class-names", "upp-labels", "latest-json"), 1000, 256),
    "orbax": (("orbax",), 1000, 512),  # tensorstore's threads reserve address space
    # Files that need the test extras to be written or found (a StyleGAN2 .pkl snapshot, a
    # 230 kB TFLite model); fewer cases, since a damaged model that loads is compiled too.
    "extras": (("stylegan2-pkl", "tflite"), 500, 256),
}
_CASES = [(fmt, group) for group, (formats, _, _) in _GROUPS.items() for fmt in formats]


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
  """`fuzz(group)`: the child's per-format outcome counts, run once per group and module."""
  done = {}

  def run(group):
    if group not in done:
      formats, cases, headroom = _GROUPS[group]
      spec = {"formats": list(formats), "cases": cases, "seed": 20,
              "workdir": str(tmp_path_factory.mktemp(f"fuzz-{group}")), "headroom_mb": headroom,
              "case_seconds": 5.0}
      env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
      env.update(OPENBLAS_NUM_THREADS="1", JAX_PLATFORMS="cpu", PYTHONWARNINGS="ignore")
      proc = subprocess.run([sys.executable, os.path.join(_HERE, "fuzz_harness.py"),
                             json.dumps(spec)], capture_output=True, text=True, timeout=600,
                            env=env, cwd=os.path.dirname(_HERE))
      assert proc.returncode == 0, proc.stderr[-3000:]
      done[group] = json.loads(proc.stdout.strip().splitlines()[-1])
    return done[group]
  return run


def _need_extras():
  """Skips unless torch (writes the StyleGAN2 snapshot) and mediapipe's .tflite files exist."""
  pytest.importorskip("torch", reason="torch not installed (parity extra): no .pkl seed")
  import test_tflite  # pylint: disable=g-import-not-at-top
  if (test_tflite._MODULES is None  # pylint: disable=protected-access
      or not os.path.exists(test_tflite._path("face_detection"))):  # pylint: disable=protected-access
    pytest.skip("mediapipe==0.10.21 not installed (--no-deps): no .tflite seed")


@pytest.mark.parametrize("fmt,group", _CASES, ids=[fmt for fmt, _ in _CASES])
def test_damaged_files_load_or_fail_with_the_readers_own_error(fuzz, fmt, group):
  if group == "extras":
    _need_extras()
  found = fuzz(group)[fmt]
  summary = {k: found[k] for k in ("cases", "loaded", "own", "escaped", "slow", "seconds",
                                   "slowest_case", "rss_growth_mb")}
  assert found["cases"] >= _GROUPS[group][1]
  assert found["escaped"] == 0, (summary, found["examples"])
  assert found["slow"] == 0, (summary, found["examples"])
  assert found["bad_messages"] == [], found["bad_messages"]  # one line, naming the file
  assert found["own"] >= found["cases"] // 10, summary  # the damage reaches the checks
  assert found["rss_growth_mb"] < 256, summary


# --- A storage of a terabyte, declared in a file of a few hundred bytes -------------------------


class _Declared:
  """Stands in for a storage's elements: writes `array` but declares `size` elements."""

  def __init__(self, array, size):
    self.array, self.size, self.dtype = array, size, array.dtype

  def astype(self, dtype):
    return self.array.astype(dtype)


def _terabyte_file(path, layout):
  """A file declaring a 1 TB float32 storage (2**38 elements) whose data is 16 bytes."""
  storage = Storage("0", "FloatStorage", np.zeros(4, np.float32))
  storage.raw = _Declared(storage.raw, 1 << 38)
  obj = {"w": Tensor(storage, 0, (1 << 19, 1 << 19), (1 << 19, 1))}
  if layout == "zip":
    write_zip(path, obj)
  elif layout == "legacy":
    write_legacy(path, obj)
  elif layout == "pickle-bytes":  # a legacy magic pickle that is a BINBYTES8 of 1 TB
    with open(path, "wb") as f:
      f.write(b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"\x00" * 64)
  else:  # "pickle-memo": a zip whose pickle stores into memo slot 2**32 - 1
    with zipfile.ZipFile(path, "w") as zf:
      zf.writestr("archive/data.pkl", b"\x80\x02]r\xff\xff\xff\xff.")


@pytest.mark.parametrize("layout", ["zip", "legacy", "pickle-bytes", "pickle-memo"])
def test_terabyte_declaration_is_refused_at_once_without_allocating(tmp_path, layout):
  path = tmp_path / f"{layout}.pth"
  _terabyte_file(path, layout)
  assert os.path.getsize(path) < 2000
  tracemalloc.start()
  start = time.perf_counter()
  try:
    with pytest.raises(pth.PthError, match=str(path)):
      pth.load(path)
    took = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert took < 0.05, f"{took:.3f} s"
  assert peak < 1 << 20, f"{peak} bytes allocated"


def test_pickle_scan_bounds_opcodes(tmp_path, monkeypatch):
  monkeypatch.setattr(pth, "MAX_PICKLE_OPCODES", 50)
  path = tmp_path / "many.pth"
  write_zip(path, list(range(100)))
  with pytest.raises(pth.PthError, match="more than 50 opcodes"):
    pth.load(path)


def test_expanded_views_cannot_multiply_a_small_file(tmp_path):
  storage = Storage("0", "FloatStorage", np.ones(1, np.float32))
  path = tmp_path / "expand.pth"
  write_zip(path, {"w": Tensor(storage, 0, (1 << 15, 1 << 15), (0, 0))})  # 4 GiB of one value
  with pytest.raises(pth.PthError, match="justifies"):
    pth.load(path)
  small = tmp_path / "small.pth"
  write_zip(small, {"w": Tensor(storage, 0, (64, 64), (0, 0))})  # a modest expand still loads
  np.testing.assert_array_equal(pth.load(small)["w"], np.ones((64, 64), np.float32))


def test_compressed_and_encrypted_records_are_refused(tmp_path):
  good = tmp_path / "good.pth"
  write_zip(good, {"w": Tensor(Storage("0", "FloatStorage", np.ones(4, np.float32)), 0, (4,),
                               (1,))})
  compressed = tmp_path / "deflated.pth"
  with zipfile.ZipFile(good) as src, zipfile.ZipFile(compressed, "w", zipfile.ZIP_DEFLATED) as dst:
    for info in src.infolist():
      dst.writestr(info.filename, src.read(info))
  with pytest.raises(pth.PthError, match="compressed"):
    pth.load(compressed)
  raw = bytearray(good.read_bytes())
  at = raw.index(b"PK\x01\x02")  # the first central directory entry: set its encrypted flag
  raw[at + 8] |= 1
  encrypted = tmp_path / "encrypted.pth"
  encrypted.write_bytes(bytes(raw))
  with pytest.raises(pth.PthError, match="encrypted"):
    pth.load(encrypted)


def test_pickle_protocols_still_load(tmp_path):
  for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
    path = tmp_path / f"p{protocol}.pth"
    with zipfile.ZipFile(path, "w") as zf:
      zf.writestr("archive/data.pkl", pickle.dumps({"a": [1, 2.5, "x", None] * 3}, protocol))
    assert pth.load(path) == {"a": [1, 2.5, "x", None] * 3}
