"""Test setup: four host CPU devices so sharding tests run anywhere; the worlds as fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")

import pytest  # noqa: E402

from jaxdissect import zoo  # noqa: E402


@pytest.fixture(scope="session")
def planted_world():
  return zoo.load_world("planted")


@pytest.fixture(scope="session")
def scene_world():
  return zoo.load_world("sceneworld")
