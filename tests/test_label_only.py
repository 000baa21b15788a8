"""Label-only segmenters (no `segment_fn`): dissection needs only labels; what optimises through
probabilities refuses them in one line."""

import numpy as np
import pytest

from jaxdissect import dissect, unitsets
from jaxdissect.model import label_only, probabilities_of


def test_label_only_segmenter_dissects_exactly_as_the_full_one(planted_world):
  gen, seg = planted_world.generator, planted_world.segmenter
  bare = label_only(seg.label_fn, seg.params, seg.concepts)
  config = dissect.Config(layers=("layer2",), n=60, batch_size=20, warmup=20)
  full, labels = dissect.dissect(gen, seg, config), dissect.dissect(gen, bare, config)
  for name, x, y in zip(full["layer2"]._fields, full["layer2"], labels["layer2"], strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=name)


def test_what_needs_probabilities_says_so(planted_world):
  gen, seg = planted_world.generator, planted_world.segmenter
  bare = label_only(seg.label_fn, seg.params, seg.concepts)
  assert probabilities_of(seg, "x") is seg.segment_fn
  with pytest.raises(ValueError, match="^unit-set optimisation needs a segmenter's class "
                     "probabilities .*labels only"):
    unitsets.loss_fn(gen, bare, "layer2", 1, np.zeros(8, np.float32))
