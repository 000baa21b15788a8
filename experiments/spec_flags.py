"""The flags every model-loading script shares besides `--model`: the segmenter, the factory
arguments and the precision (`experiments.model_flags` for generators,
`experiments.classifier_flags` for classifiers, each adding its own `--model`)."""

from __future__ import annotations

from absl import flags

from jaxdissect import precision, zoo

MODEL_ARG = flags.DEFINE_multi_string(
    "model_arg", [], "key=value keyword argument for the --model factory or loader (repeatable; "
    "values are JSON literals or plain text).")
SEGMENTER = flags.DEFINE_string(
    "segmenter", None, "Segmenter spec (default: a generator's usual one; for a classifier the "
    "images' exact labels, when they have them): " + zoo.describe_specs("segmenter") + ".")
SEGMENTER_ARG = flags.DEFINE_multi_string(
    "segmenter_arg", [], "key=value keyword argument for the --segmenter factory or loader "
    "(repeatable).")
DTYPE = flags.DEFINE_enum("dtype", "float32", list(precision.DTYPES),
                          "Precision of the models (bfloat16 for GPUs and TPUs); the statistics "
                          "are float32 either way.")
