"""The `--model` / `--segmenter` / `--dtype` flags of scripts that choose their models (specs of
`jaxdissect.zoo`, resolved by `experiments.models`)."""

from __future__ import annotations


from absl import flags

from experiments import models
from jaxdissect import precision, zoo

_MODEL = flags.DEFINE_string(
    "model", "sceneworld", "Generator spec: " + zoo.describe_specs("model") + ".")
_MODEL_ARG = flags.DEFINE_multi_string(
    "model_arg", [], "key=value keyword argument for the --model factory or loader (repeatable; "
    "values are JSON literals or plain text).")
_SEGMENTER = flags.DEFINE_string(
    "segmenter", None, "Segmenter spec (default: the model's usual one): "
    + zoo.describe_specs("segmenter") + ".")
_SEGMENTER_ARG = flags.DEFINE_multi_string(
    "segmenter_arg", [], "key=value keyword argument for the --segmenter factory or loader "
    "(repeatable).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", list(precision.DTYPES),
                           "Precision of the generator and segmenter (bfloat16 for GPUs and "
                           "TPUs); the statistics are float32 either way.")


def from_flags() -> models.Models:
  """The models the flags name."""
  return models.load_models(_MODEL.value, _SEGMENTER.value, _MODEL_ARG.value,
                            _SEGMENTER_ARG.value, _DTYPE.value)
