"""Streaming statistics as optax-style `Stat(init, update, merge, result)` bundles."""

from jaxdissect.stats.base import Stat, merge_all, merge_over_axis
from jaxdissect.stats.bincount import BincountState, bincount
from jaxdissect.stats.conditional import (
    ConditionalState,
    IqrThresholds,
    conditional_cdf,
    conditional_histogram,
    conditional_quantiles,
    iqr_thresholds,
    merge_conditional,
)
from jaxdissect.stats.iou import IouState, iou_scores, iou_tally, iqr_scores
from jaxdissect.stats.moments import (
    CrossCovariance,
    CrossCovarianceState,
    Moments,
    MomentsState,
    cross_covariance,
    moments,
)
from jaxdissect.stats.topk import TopK, TopKState, topk

from jaxdissect.stats.quantile import QuantileState, quantile_sketch

__all__ = [
    "BincountState",
    "ConditionalState",
    "CrossCovariance",
    "CrossCovarianceState",
    "IouState",
    "IqrThresholds",
    "Moments",
    "MomentsState",
    "QuantileState",
    "Stat",
    "TopK",
    "TopKState",
    "bincount",
    "conditional_cdf",
    "conditional_histogram",
    "conditional_quantiles",
    "cross_covariance",
    "iou_scores",
    "iou_tally",
    "iqr_scores",
    "iqr_thresholds",
    "merge_all",
    "merge_conditional",
    "merge_over_axis",
    "moments",
    "quantile_sketch",
    "topk",
]
