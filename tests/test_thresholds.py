"""Where the quantile rule puts its bins: knots at the warmup's order statistics."""

import numpy as np

from jaxdissect.thresholds import TopQuantile


def test_knots_follow_the_warmup_ranks_densest_around_q():
  rule = TopQuantile(0.01)
  rng = np.random.default_rng(0)
  values = rng.standard_normal((2, 200_000)).astype(np.float32)
  values[1] = np.maximum(values[1], 0) * (rng.random(200_000) < 0.004)  # 99.6% zeros
  total = values.shape[1]
  kept = -np.sort(-values, axis=1)[:, :rule.keep(total)]
  knots = rule.bracket_of_largest(kept, total)
  assert knots.shape == (2, rule.runs + 1)
  above = np.array([(values[0] > k).sum() for k in knots[0]])  # pixels above each knot
  rank_q = round(0.01 * total)
  assert abs(above[0] - 3 * rank_q) <= 1 and np.all(np.diff(above) < 0)
  assert knots[0, -1] > values[0].max()  # the top run reaches past the largest value
  pixels = -np.diff(above[:-2])  # pixels per run between 3q and q/3
  near = np.argmin(np.abs(above[:-2] - rank_q))
  assert pixels[near] < pixels[0] / 3 and pixels[near] < 0.1 * rank_q
  # A unit whose q-quantile is a value shared by many pixels: lo is that value exactly.
  assert knots[1, 0] == 0.0 and knots[1, -1] > values[1].max()
