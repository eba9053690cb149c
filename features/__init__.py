"""The feature calculator: one implementation, batch and incremental."""

from features.calculator import (
    INPUT_COLUMNS,
    FeatureSnapshot,
    HFTFeatureCalculator,
    TimeframeSnapshot,
)
from features.columns import PER_CANDLE, WINDOWED, feature_columns

__all__ = [
    "INPUT_COLUMNS",
    "PER_CANDLE",
    "WINDOWED",
    "FeatureSnapshot",
    "HFTFeatureCalculator",
    "TimeframeSnapshot",
    "feature_columns",
]
