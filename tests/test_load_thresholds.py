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
