"""Threshold rules as values: what "a unit is on" means, chosen once per dissection.

A dissection asks three things of its threshold rule: which running tally to keep per layer
(and on what bracket of values), how the warmup's activations set that bracket, and how the
finished tally turns into thresholds, IoU and labels. `TopQuantile` (a unit is on in its top q,
the PNAS default) and `IqrGrid` (GAN Dissection's IQR-maximising level) answer them; the engine
(`jaxdissect.dissect`) holds one rule and never asks which one it is, the way an optax optimizer
is a value its training loop does not inspect.

`TopQuantile` tallies fine per-concept histograms over a per-unit bracket that the warmup says
will hold the unit's threshold (`stats.tail`); the exact-quantile threshold and every IoU are read
off with hard error bounds, and units whose bound is wider than the tolerance get a narrower
bracket for another pass. `IqrGrid` tallies per-concept CDFs on a grid of 100 levels per unit
(the warmup's quantiles at 1 - logspace(-3, 0, 100)) and picks the level of highest IQR; IoU at a
grid level is an exact count.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from jaxdissect.stats import conditional, levels, tail, tail_bins

IQR_LEVELS = 1.0 - np.logspace(-3, 0, 100)[::-1]  # ascending quantile levels of the IQR grid


class LayerOutcome(NamedTuple):
  """A finished layer tally read off by a rule (U units, K label values).

  `iou_bound` is the largest possible error of any IoU of the unit (0 for exact counts); `iqr`
  the IQR of the label (zeros where the rule does not compute it); `refine` the brackets of a
  next pass when some unit's bound exceeds the tolerance, else None.
  """

  thresholds: np.ndarray
  iou: np.ndarray
  label: np.ndarray
  iou_bound: np.ndarray
  iqr: np.ndarray
  refine: Any


class TopQuantile(NamedTuple):
  """A unit is on where its upsampled activation is in its top `q` (0 < q < 1).

  The tally bins each unit's bracket into `num_bins` bins in `segments` runs of equal bins
  between knots read off the warmup (`bracket_of_largest`); `tolerance` bounds every IoU's error,
  or the unit is tallied again on a narrower bracket.
  """

  q: float
  num_bins: int = 2048
  tolerance: float = 1e-3
  segments: int = 16

  name = "quantile"
  bracket_fields = ("knots",)

  from_largest = True  # the bracket needs only each unit's largest warmup values (`keep`)

  @property
  def runs(self) -> int:
    """Segments of equal bins actually used: the largest count dividing `num_bins`."""
    return math.gcd(self.num_bins, self.segments)

  def stat(self, num_concepts: int, units: int, bracket: Any = None):
    knots = tail_bins.uniform_knots(np.zeros(units), np.ones(units), self.runs) \
        if bracket is None else bracket
    return tail.tail_histogram(units, num_concepts, knots, self.num_bins)

  def update(self, num_concepts: int, units: int) -> Callable:
    """`f(state, upsampled, labels, raw) -> state`: given the raw map, a CPU counts from it."""
    return self.stat(num_concepts, units).update

  def bracket_of(self, state: tail.TailState) -> Any:
    return np.asarray(state.knots)

  def keep(self, total: int) -> int:
    """How many of each unit's largest values (of `total`) the bracket is read from."""
    return _tail_ranks(total, self.q)[1]

  def bracket_of_largest(self, kept: np.ndarray, total: int) -> np.ndarray:
    """Knots `[U, S + 1]` from each unit's `keep(total)` largest of `total` values (in any
    order): order statistics from 3q up to the largest value from the top, densest around q
    (`_knot_ranks`), so bins hold about equal numbers of pixels, fewest where the threshold is
    expected; the last knot lies beyond the largest value. A value at the q-quantile shared by
    many pixels (a ReLU's zero) becomes lo itself, so the threshold lands on the point mass
    exactly, and the other knots lie above it."""
    rank_q, rank_lo, rank_hi = _tail_ranks(total, self.q)
    top = np.sort(kept, axis=1)[:, ::-1]  # descending: top[:, r - 1] has rank r
    at_q = top[:, rank_q - 1]
    tied = np.sum(kept == at_q[:, None], axis=1) > max(1, rank_q // 10)
    runs = self.runs
    # 3q .. q/3 densest around q, then q/3 .. q/30 and q/30 .. beyond the largest value.
    inner = max(runs - 2, 1)
    far = [max(1, rank_hi // 10), 1][-(runs - inner):] if runs > inner else []
    ranks = np.concatenate([_knot_ranks(rank_q, rank_lo, rank_hi, inner), far])
    # Tied units: the inner knots evenly spaced in log-rank from q to q/3, above the point mass.
    squeezed = np.concatenate([np.round(rank_q * (rank_hi / rank_q) ** np.linspace(
        0, 1, inner + 1)).astype(np.int64), far])
    ranks, squeezed = (np.minimum.accumulate(np.asarray(r, np.int64)) for r in (ranks, squeezed))
    knots = np.where(tied[:, None], top[:, squeezed - 1], top[:, ranks - 1])
    knots[:, 0] = np.where(tied, at_q, knots[:, 0])
    # The last knot goes as far above the warmup's largest value as that is above its q-th: a
    # unit that fires hardest on images the warmup did not see still has its threshold inside.
    knots[:, -1] = top[:, 0] + (top[:, 0] - at_q)
    knots = np.maximum.accumulate(np.maximum(knots, knots[:, :1]), axis=1)
    return tail_bins.normalize_knots(knots, self.num_bins)

  def outcome(self, state: tail.TailState) -> LayerOutcome:
    res = tail.tail_iou(state, float(self.q))
    bound = np.where(res.resolved, res.bound, 1.0)
    knots, redo = tail.refine_brackets(state, res, self.tolerance)
    label = np.argmax(res.iou, axis=1)
    return LayerOutcome(res.thresholds, res.iou, label, bound, np.zeros(len(res.thresholds)),
                        knots if redo.any() else None)


class IqrGrid(NamedTuple):
  """A unit's threshold is the level of a 100-level grid that maximises the IQR of its label
  (GAN Dissection's rule); `seed` picks the warmup subsample the grid is read from."""

  seed: int = 1
  cap: int = 200_000

  name = "iqr"
  bracket_fields = ("edges",)
  from_largest = False  # the grid needs a sample of all warmup values (`sample`)

  def stat(self, num_concepts: int, units: int, bracket: Any = None):
    edges = np.zeros((units, len(IQR_LEVELS)), np.float32) if bracket is None else bracket
    return conditional.conditional_histogram(units, num_concepts, edges)

  def update(self, num_concepts: int, units: int) -> Callable:
    """`f(state, upsampled, labels, raw) -> state`: given the raw map, a CPU counts from it."""
    return self.stat(num_concepts, units).update

  def bracket_of(self, state: conditional.ConditionalState) -> Any:
    return np.asarray(state.edges)

  def sample(self, total: int) -> np.ndarray:
    """Sorted positions (of `total` warmup values per unit) the grid is read from: a fixed
    random subsample of at most `cap`, so the warmup keeps `[U, cap]` values, not all."""
    if total <= self.cap:
      return np.arange(total)
    return np.sort(np.random.RandomState(self.seed).choice(total, self.cap, replace=False))

  def warmup_bracket(self, values: Sequence[np.ndarray]) -> Any:
    """`[U, 100]` quantiles at IQR_LEVELS of the sampled warmup values (`sample`)."""
    values = np.concatenate(values, axis=1)
    # Sorted first: numpy's SIMD sort and a quantile of sorted rows take a third of the time
    # of `np.quantile`'s selection on unsorted ones, for the same numbers.
    values.sort(axis=1)
    grid = np.quantile(values, IQR_LEVELS, axis=1).T
    return np.maximum.accumulate(grid, axis=1).astype(np.float32)

  def outcome(self, state: conditional.ConditionalState) -> LayerOutcome:
    chosen = conditional.iqr_thresholds(state)
    above = np.asarray(state.above, np.float64)  # [K, U, T]
    units = np.arange(above.shape[1])
    ic = above[:, units, chosen.level_index]  # [K, U]
    concept = np.asarray(state.pixels, np.float64)[:, None]
    union = ic[0][None] + concept - ic
    scores = np.where(union > 0, ic / np.maximum(union, 1.0), 0.0).T
    scores[:, 0] = 0.0
    return LayerOutcome(chosen.thresholds, scores, chosen.labels,
                        np.zeros(len(chosen.thresholds)), chosen.iqr, None)


class CountAt(NamedTuple):
  """Exact counts at levels fixed before the pass (given, or chosen by a threshold stage: see
  `jaxdissect.stages`), with the IoU denominator `iou` ("plain" or "category", the original
  GAN Dissection's) and its per-label IQR. The bracket is `(edges [U, 1], given_label [U])`:
  the level, and the unit's label when the stage chose one (-1: the best IoU)."""

  iou: str = "plain"
  label_category: tuple[int, ...] = ()

  name = "given"
  bracket_fields = ("edges", "given_label")
  from_largest = False

  def stat(self, num_concepts: int, units: int, bracket: Any = None):
    edges, given = ((np.zeros((units, 1), np.float32), None) if bracket is None else bracket)
    return levels.levels_tally(units, num_concepts, edges, self._categories(num_concepts), given)

  def update(self, num_concepts: int, units: int) -> Callable:
    return self.stat(num_concepts, units).update

  def bracket_of(self, state: levels.LevelsState) -> Any:
    return np.asarray(state.edges), np.asarray(state.given_label)

  def _categories(self, num_concepts: int) -> tuple[int, ...]:
    return self.label_category or (0,) * num_concepts

  def outcome(self, state: levels.LevelsState) -> LayerOutcome:
    num_concepts, num_units = np.asarray(state.above).shape[:2]
    cats = self._categories(num_concepts)
    counts = levels.counts_at(state, np.zeros(num_units, np.int64))
    iou = levels.iou_of(counts, cats, self.iou)
    given = np.asarray(state.given_label)
    label = np.where(given >= 0, given, np.argmax(iou, axis=1))
    iqr = levels.label_iqr(counts, cats, self.iou)[np.arange(num_units), label]
    return LayerOutcome(np.asarray(state.edges)[:, 0], iou, label, np.zeros(num_units), iqr,
                        None)


class IqrCategory(NamedTuple):
  """The original GAN Dissection's IQR threshold choice (`levels.iqr_choice`) on the grid of
  `IqrGrid` (the warmup's quantiles at `IQR_LEVELS`), with category-conditional predictions
  ("category") or unconditional ones ("plain"); a threshold stage, whose IoU is then counted at
  the chosen levels by `CountAt`."""

  iou: str = "category"
  label_category: tuple[int, ...] = ()
  seed: int = 1
  cap: int = 200_000

  name = "iqr"
  bracket_fields = ("edges", "given_label")
  from_largest = False

  def stat(self, num_concepts: int, units: int, bracket: Any = None):
    edges = (np.zeros((units, len(IQR_LEVELS)), np.float32) if bracket is None
             else bracket[0])
    cats = self.label_category or (0,) * num_concepts
    return levels.levels_tally(units, num_concepts, edges, cats)

  def update(self, num_concepts: int, units: int) -> Callable:
    return self.stat(num_concepts, units).update

  def bracket_of(self, state: levels.LevelsState) -> Any:
    return np.asarray(state.edges), np.asarray(state.given_label)

  def sample(self, total: int) -> np.ndarray:
    return IqrGrid(self.seed, self.cap).sample(total)

  def warmup_bracket(self, values: Sequence[np.ndarray]) -> Any:
    edges = IqrGrid(self.seed, self.cap).warmup_bracket(values)
    return edges, np.full(edges.shape[0], -1, np.int32)

  def outcome(self, state: levels.LevelsState) -> LayerOutcome:
    num_concepts, num_units = np.asarray(state.above).shape[:2]
    cats = self.label_category or (0,) * num_concepts
    chosen = levels.iqr_choice(state, cats, self.iou)
    counts = levels.counts_at(state, chosen.level)
    iou = levels.iou_of(counts, cats, self.iou)
    units = np.arange(num_units)
    return LayerOutcome(np.asarray(state.edges)[units, chosen.level], iou, chosen.label,
                        np.zeros(num_units), chosen.iqr, None)


ThresholdRule = TopQuantile | IqrGrid | CountAt | IqrCategory


def rule_for(threshold: float | str, *, num_bins: int = 2048, tolerance: float = 1e-3,
             seed: int = 1) -> ThresholdRule:
  """The rule a `threshold` setting names: a top fraction q in (0, 1), or "iqr"."""
  if isinstance(threshold, str):
    if threshold != "iqr":
      raise ValueError(f"threshold {threshold!r} is neither a number in (0, 1) nor 'iqr'")
    return IqrGrid(seed)
  if not 0.0 < float(threshold) < 1.0:
    raise ValueError(f"threshold {threshold} is out of range; give a top fraction q with "
                     "0 < q < 1, e.g. 0.01, or 'iqr'")
  return TopQuantile(float(threshold), num_bins, tolerance)


class Interpretable(NamedTuple):
  """When a labelled unit counts as interpretable: its IoU above `iou` and, in GAN Dissection's
  IQR rule, its label's IQR above `iqr` too (None: IoU alone, the PNAS rule)."""

  iou: float = 0.04
  iqr: float | None = None

  def __call__(self, label: int, iou: float, iqr: float) -> bool:
    return bool(label != 0 and iou > self.iou and (self.iqr is None or iqr > self.iqr))

  def describe(self) -> str:
    text = f"IoU > {self.iou:g}"
    return text if self.iqr is None else f"IQR > {self.iqr:g} and {text}"

  def record(self) -> dict[str, Any]:
    """What `dissect.json` says about the rule."""
    return {"rule": self.describe(), "iou_above": self.iou, "iqr_above": self.iqr}


INTERPRETABLE_RULES = ("auto", "iou", "gandissect")


def interpretable_for(threshold: float | str, rule: str = "auto", iou: float | None = None,
                      *, iqr: float | None = None, has_iqr: bool | None = None) -> Interpretable:
  """The interpretability rule `rule` names for a `threshold` setting.

  "iou": IoU > `iou` (0.04 unless given), the PNAS rule. "gandissect": IQR > `iqr` (0.01 unless
  given) and IoU > `iou` (0.05 unless given), the original GAN Dissection code's rule, which needs
  each label's IQR: IQR thresholds compute it, and so does every staged run (`has_iqr`; default:
  only for `threshold="iqr"`). "auto": "gandissect" for `threshold="iqr"`, else "iou".
  """
  if rule not in INTERPRETABLE_RULES:
    raise ValueError(f"unknown interpretability rule {rule!r}; valid rules are: "
                     f"{', '.join(INTERPRETABLE_RULES)}")
  if has_iqr is None:
    has_iqr = threshold == "iqr"
  if rule == "auto":
    rule = "gandissect" if threshold == "iqr" else "iou"
  if rule == "iou":
    return Interpretable(0.04 if iou is None else float(iou))
  if not has_iqr:
    raise ValueError("the 'gandissect' interpretability rule needs each label's IQR, which only "
                     "IQR thresholds compute; use threshold 'iqr' or the 'iou' rule")
  return Interpretable(0.05 if iou is None else float(iou), 0.01 if iqr is None else float(iqr))


def _knot_ranks(rank_q: int, rank_lo: int, rank_hi: int, segments: int,
                concentration: float = 2.0) -> np.ndarray:
  """`segments + 1` ranks from the top, `rank_lo` down to `rank_hi`, spaced evenly in
  `sinh(concentration * t)` of log-rank: dense near `rank_q`, where the threshold is expected
  (the warmup's estimate of it is off by a few percent of q), sparse towards the ends."""
  t = np.linspace(1.0, -1.0, segments + 1)
  below, above = np.log(rank_lo / rank_q), np.log(rank_q / max(rank_hi, 1))
  scale = np.where(t > 0, below, above)
  ranks = rank_q * np.exp(scale * np.sinh(concentration * t) / np.sinh(concentration))
  ranks = np.clip(np.round(ranks), max(rank_hi, 1), max(rank_lo, 1)).astype(np.int64)
  return np.minimum.accumulate(ranks)


def _tail_ranks(total: int, q: float) -> tuple[int, int, int]:
  """1-based ranks from the top of the q-quantile, the bracket's low end, and q/3."""
  rank_q = max(1, int(round(q * total)))
  return rank_q, min(total, 3 * rank_q), max(1, rank_q // 3)
