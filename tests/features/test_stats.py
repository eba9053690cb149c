"""The kernel's building blocks, step by step against plain Python / numpy.

Both functions promise a fixed sequence of float operations (window sums added newest first;
recurrences as b*u + c*y_prev), so a plain Python loop doing the same operations must give the
same bits, whatever the block size or strategy (small-block view or shifted adds, fused step or
lfilter).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from features.stats import SMALL_BLOCK, seeded_recurrence, window_sums


def _history_block(rng: np.random.Generator, lookback: int, known: int, m: int) -> np.ndarray:
    """Two rows of values: `lookback` history columns (NaN beyond the `known` newest) + m."""
    x = rng.normal(100.0, 5.0, size=(2, lookback + m))
    x[:, :lookback - known] = np.nan
    return x


def _naive_window_sum(row: np.ndarray, end: int, n: int) -> float:
    total = float(row[end])
    for k in range(1, n):
        total += float(row[end - k])
    return total


@pytest.mark.parametrize("m", [1, 2, SMALL_BLOCK, SMALL_BLOCK + 1, 500])
@pytest.mark.parametrize("known", [0, 3, 20])
def test_window_sums_match_a_sequential_python_sum(m: int, known: int) -> None:
    lookback, lengths = 20, (2, 5, 21)
    x = _history_block(np.random.default_rng(m * 100 + known), lookback, known, m)
    got = window_sums(x, lookback, lengths)
    assert got.shape == (len(lengths), 2, m)
    for j, n in enumerate(lengths):
        for r in range(2):
            for i in range(m):
                end = lookback + i
                want = _naive_window_sum(x[r], end, n)
                if math.isnan(want):
                    assert math.isnan(got[j, r, i])
                else:
                    assert got[j, r, i] == want  # bit for bit, not just close
    # And against numpy's own (differently ordered) sum, to a float tolerance.
    full = np.lib.stride_tricks.sliding_window_view(x[0], 5)[lookback - 4:]
    np.testing.assert_allclose(got[1, 0], full.sum(axis=1), rtol=1e-13)


def test_window_sums_do_not_depend_on_the_block_split() -> None:
    lookback, lengths, m = 10, (3, 11), 200
    x = _history_block(np.random.default_rng(7), lookback, lookback, m)
    whole = window_sums(x, lookback, lengths)
    for i in range(m):  # each position as its own one-column block
        one = window_sums(x[:, i:lookback + i + 1], lookback, lengths)
        np.testing.assert_array_equal(one[:, :, 0], whole[:, :, i])


def test_window_sums_windows_reaching_unknown_history_are_nan() -> None:
    x = np.array([[np.nan, np.nan, 1.0, 2.0, 4.0]])
    got = window_sums(x, 2, (2, 3))
    np.testing.assert_array_equal(got[0, 0], [np.nan, 3.0, 6.0])
    np.testing.assert_array_equal(got[1, 0], [np.nan, np.nan, 7.0])


def test_window_sums_reject_bad_arguments() -> None:
    x = np.zeros((1, 5))
    with pytest.raises(ValueError, match="lookback"):
        window_sums(x, 2, (4,))
    with pytest.raises(ValueError, match="2-D"):
        window_sums(np.zeros(5), 2, (2,))
    with pytest.raises(ValueError, match="fewer than lookback"):
        window_sums(x, 6, (2,))
    assert window_sums(x, 5, (2,)).shape == (1, 1, 0)


def _naive_recurrence(u: list[float], b: float, c: float, prev: float, seed: float,
                      seed_at: int) -> list[float]:
    out, y = [], prev
    for k, value in enumerate(u):
        if not math.isnan(y):
            y = b * value + c * y
        elif k == seed_at:
            y = seed
        out.append(y)
    return out


def _series(rng: np.random.Generator, m: int) -> tuple[np.ndarray, ...]:
    x = rng.normal(0.0, 1.0, size=(2, m))
    src = np.array([0, 0, 1, 1, 1], dtype=np.intp)
    n = np.array([3.0, 9.0, 3.0, 3.0, 14.0])
    b, c = 2.0 / (n + 1.0), (n - 1.0) / (n + 1.0)
    prev = np.array([0.5, np.nan, np.nan, -1.5, np.nan])
    seed = np.array([np.nan, 2.0, 3.0, np.nan, -4.0])
    seed_at = np.array([-1, 4, 0, -1, m + 3], dtype=np.intp)
    return x, src, b, c, prev, seed, seed_at


@pytest.mark.parametrize("m", [1, 2, 7, 300])
def test_seeded_recurrence_matches_a_python_loop(m: int) -> None:
    x, src, b, c, prev, seed, seed_at = _series(np.random.default_rng(m), m)
    got = seeded_recurrence(x, src, b, c, prev, seed, seed_at)
    assert got.shape == (5, m)
    for r in range(5):
        want = _naive_recurrence(x[src[r]].tolist(), float(b[r]), float(c[r]), float(prev[r]),
                                 float(seed[r]), int(seed_at[r]))
        np.testing.assert_array_equal(got[r], want)  # identical bits, NaN where undefined
    # The series whose seed lies past the block stays undefined.
    assert np.isnan(got[4]).all()


def test_seeded_recurrence_one_step_at_a_time_equals_one_block() -> None:
    m = 120
    x, src, b, c, prev, seed, seed_at = _series(np.random.default_rng(3), m)
    whole = seeded_recurrence(x, src, b, c, prev, seed, seed_at)
    state = prev.copy()
    for k in range(m):
        step = seeded_recurrence(x[:, k:k + 1], src, b, c, state, seed, seed_at - k)
        np.testing.assert_array_equal(step[:, 0], whole[:, k])
        state = step[:, 0]


def test_seeded_recurrence_is_an_ema_against_numpy() -> None:
    rng = np.random.default_rng(11)
    u = rng.normal(50.0, 2.0, size=(1, 1000))
    alpha = 2.0 / 11.0
    got = seeded_recurrence(u, np.array([0], dtype=np.intp), np.array([alpha]),
                            np.array([1.0 - alpha]), np.array([u[0, :10].mean()]))[0]
    # Closed form: y_k = (1-a)^(k+1) y0 + sum_j a (1-a)^(k-j) u_j.
    k = np.arange(1000)
    weights = alpha * (1.0 - alpha) ** (k[:, None] - k[None, :]) * (k[:, None] >= k[None, :])
    want = weights @ u[0] + (1.0 - alpha) ** (k + 1) * u[0, :10].mean()
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_seeded_recurrence_without_seeds_keeps_unseeded_series_undefined() -> None:
    x = np.ones((1, 4))
    got = seeded_recurrence(x, np.array([0, 0], dtype=np.intp), np.array([0.5, 0.5]),
                            np.array([0.5, 0.5]), np.array([2.0, np.nan]))
    np.testing.assert_array_equal(got[0], [1.5, 1.25, 1.125, 1.0625])
    assert np.isnan(got[1]).all()


def test_seeded_recurrence_rejects_mismatched_arguments() -> None:
    x, src = np.ones((1, 3)), np.array([0], dtype=np.intp)
    one = np.array([0.5])
    with pytest.raises(ValueError, match="one value per series"):
        seeded_recurrence(x, src, np.array([0.5, 0.5]), one, one)
    with pytest.raises(ValueError, match="both seed and seed_at"):
        seeded_recurrence(x, src, one, one, one, seed=one)
    with pytest.raises(ValueError, match="seed and seed_at must have one value"):
        seeded_recurrence(x, src, one, one, one, np.ones(2), np.zeros(2, dtype=np.intp))
