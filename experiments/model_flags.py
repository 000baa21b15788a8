"""The `--model` / `--segmenter` / `--dtype` flags of scripts that choose their models (specs of
`jaxdissect.zoo`, resolved by `experiments.models`)."""

from __future__ import annotations


from absl import flags

from experiments import models, spec_flags
from jaxdissect import zoo

_MODEL = flags.DEFINE_string(
    "model", "sceneworld", "Generator spec: " + zoo.describe_specs("model") + ".")


def from_flags() -> models.Models:
  """The models the flags name."""
  return models.load_models(_MODEL.value, spec_flags.SEGMENTER.value, spec_flags.MODEL_ARG.value,
                            spec_flags.SEGMENTER_ARG.value, spec_flags.DTYPE.value)
