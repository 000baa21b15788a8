"""Checkpoint wrapper: round trips, and clear errors for missing or damaged checkpoints."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdissect import checkpoint


def test_round_trip_nested_params(tmp_path):
  tree = {"layer1": {"kernel": np.arange(12, dtype=np.float32).reshape(3, 4),
                     "bias": np.zeros(4, np.float32)},
          "step": np.int32(7)}
  path = tmp_path / "ckpt"
  checkpoint.save(str(path), tree)
  back = checkpoint.load(str(path), tree)
  np.testing.assert_array_equal(back["layer1"]["kernel"], tree["layer1"]["kernel"])
  assert int(back["step"]) == 7
  checkpoint.save(str(path), {**tree, "step": np.int32(8)})  # overwrite in place
  assert int(checkpoint.load(str(path))["step"]) == 8


def test_missing_checkpoint_names_path_and_remedy(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoint at .*nowhere.*run me"):
    checkpoint.load(str(tmp_path / "nowhere"), remake="run me")


def test_corrupt_checkpoint_is_reported(tmp_path):
  path = tmp_path / "ckpt"
  checkpoint.save(str(path), {"w": jnp.ones((64, 64))})
  for root, _, files in os.walk(path):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
    checkpoint.load(str(path), {"w": jnp.ones((64, 64))})
