"""`--thresholds FILE` read back: .npy, .npz, .json and dissect.json give the same levels, and a
damaged file is one ValueError naming it."""

import json

import numpy as np
import pytest

from jaxdissect import stages

LEVELS = np.array([0.5, -1.25, 3.0], np.float32)


def test_every_format_gives_the_levels(tmp_path):
  np.save(tmp_path / "a.npy", LEVELS)
  np.savez(tmp_path / "b.npz", layer4=LEVELS)
  (tmp_path / "c.json").write_text(json.dumps({"layer4": LEVELS.tolist()}))
  doc = {"layers": [{"layer": "layer4",
                     "units": [{"unit": u, "threshold": float(t)} for u, t in enumerate(LEVELS)]}]}
  (tmp_path / "dissect.json").write_text(json.dumps(doc))
  for name in ("a.npy", "b.npz", "c.json", "dissect.json"):
    got = stages.load_thresholds(str(tmp_path / name), ("layer4",))
    np.testing.assert_array_equal(np.asarray(got["layer4"], np.float32), LEVELS, err_msg=name)


@pytest.mark.parametrize("name, data", [
    ("bad.json", b'{"layers": [{"units": []}]}'),  # a layer record without its name
    ("bad2.json", b'[1, 2, 3]'),
    ("bad3.json", b'{"layer4": [1, "x"]}'),
    ("bad.npz", b"PK\x03\x04 not a zip"),
    ("bad.npy", b"\x93NUMPY\x01\x00\xff\xff{'descr': '<f4'"),
])
def test_damaged_files_are_one_value_error(tmp_path, name, data):
  (tmp_path / name).write_bytes(data)
  with pytest.raises(ValueError, match=name):
    stages.load_thresholds(str(tmp_path / name), ("layer4",))


def test_npz_reader_matches_numpy_for_stored_and_deflated_archives(tmp_path):
  from jaxdissect import npyfile  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  arrays = {"layer4": LEVELS, "b8.conv1": rng.standard_normal((3, 5)).astype(np.float64),
            "ints": np.arange(7, dtype=np.int16), "fortran": np.asfortranarray(np.eye(3))}
  for save in (np.savez, np.savez_compressed):
    path = tmp_path / f"{save.__name__}.npz"
    save(path, **arrays)
    got = npyfile.read_npz(str(path))
    with np.load(path) as want:
      assert sorted(got) == sorted(want.files)
      for k in want.files:
        np.testing.assert_array_equal(got[k], want[k])
        assert got[k].dtype == want[k].dtype


def test_npz_declaring_more_than_the_bound_is_refused_before_inflating(tmp_path):
  import tracemalloc  # pylint: disable=g-import-not-at-top
  from jaxdissect import npyfile  # pylint: disable=g-import-not-at-top
  path = tmp_path / "bomb.npz"
  np.savez_compressed(path, layer4=np.zeros(50_000_000, np.float32))  # 200 MB in ~200 kB
  assert path.stat().st_size < 1_000_000
  tracemalloc.start()
  with pytest.raises(ValueError, match="bomb.npz.*more than 1048576"):
    npyfile.read_npz(str(path), max_bytes=1 << 20)
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  assert peak < 4 << 20
  # A member that inflates past the size its zip header declares is refused too.
  np.savez(tmp_path / "ok.npz", layer4=LEVELS)
  data = bytearray((tmp_path / "ok.npz").read_bytes())
  data[data.index(b"\x93NUMPY") + 8] ^= 1  # corrupt the header length: a ValueError, no crash
  (tmp_path / "bad.npz").write_bytes(bytes(data))
  with pytest.raises(ValueError, match="bad.npz"):
    npyfile.read_npz(str(tmp_path / "bad.npz"))
