"""The features step: every closed candle gets its HFT features, per (exchange, symbol).

Keyed like the candle step; one `HFTFeatureCalculator` per key holds the constant-size state
of every timeframe, and its snapshot is the calculator's (small, immutable, picklable).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from bytewax.operators import StatefulBatchLogic

from features.calculator import FeatureSnapshot, HFTFeatureCalculator
from operators import metrics
from operators.messages import CandleBatch


class FeatureLogic(StatefulBatchLogic[CandleBatch, CandleBatch, FeatureSnapshot]):
    """Appends the feature columns to each CandleBatch, continuing per timeframe."""

    def __init__(self, periods: Sequence[int], resume: FeatureSnapshot | None = None) -> None:
        self.calc = (HFTFeatureCalculator.from_snapshot(resume) if resume is not None
                     else HFTFeatureCalculator(periods))

    def on_batch(self, values: list[CandleBatch]) -> tuple[Iterable[CandleBatch], bool]:
        with metrics.PROCESSING_LATENCY.time(stage="features"):
            return self._on_batch(values), StatefulBatchLogic.RETAIN

    def _on_batch(self, values: list[CandleBatch]) -> list[CandleBatch]:
        out = []
        for cb in values:
            if not len(cb):
                continue
            batch = self.calc.compute_record_batch(cb.batch, timeframe=cb.timeframe)
            out.append(CandleBatch(cb.exchange, cb.symbol, cb.timeframe, batch))
        return out

    def snapshot(self) -> FeatureSnapshot:
        return self.calc.snapshot()


def feature_builder(periods: Sequence[int]) -> Callable[[FeatureSnapshot | None], FeatureLogic]:
    """The `builder` argument of `op.stateful_batch` for the features step."""
    ps = list(periods)
    return lambda resume: FeatureLogic(ps, resume)
