"""Messages between steps: a TickBatch pickles (Bytewax's exchange between workers) to its own
rows only, and back to an equal batch."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa

from operators.messages import TickBatch


def test_a_sliced_tick_batch_pickles_to_its_own_rows_and_back() -> None:
    n = 100_000
    parent = pa.record_batch({"price": np.arange(n, dtype=np.float64),
                              "id": [str(i) for i in range(n)]})
    lines = pa.array(np.arange(2, n + 2, dtype=np.int64))
    item = TickBatch("binance-futures", "BTCUSDT", "trades", parent.slice(500, 20), "f.csv.gz",
                     lines.slice(500, 20))
    data = pickle.dumps(item)
    assert len(data) < 4_000  # the parent's buffers are about 2.3 MB
    back = pickle.loads(data)
    assert back.batch.equals(item.batch) and back.batch.schema == item.batch.schema
    assert back.lines is not None and item.lines is not None
    assert back.lines.equals(item.lines)
    assert (back.exchange, back.symbol, back.data_type, back.source) == (
        item.exchange, item.symbol, item.data_type, item.source)
    plain = pickle.loads(pickle.dumps(TickBatch("x", "y", "trades", parent.slice(0, 3))))
    assert plain.lines is None and plain.batch.equals(parent.slice(0, 3))
