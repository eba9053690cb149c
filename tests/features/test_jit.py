"""features.jit: kernels compile eagerly, and still compile where no disk cache is writable."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from numba.core import caching

from features.jit import compiled, inlined


def _scale(x, k):  # pragma: no cover - compiled
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = x[i] * k
    return out


def test_compiled_runs_the_given_signature():
    fn = compiled("f8[::1](f8[::1], f8)")(_scale)
    assert fn(np.arange(3.0), 2.0).tolist() == [0.0, 2.0, 4.0]
    with pytest.raises(TypeError, match="No matching definition"):
        fn(np.arange(3), 2.0)  # int64: not the compiled signature, refused (no recompiling)


def test_without_a_writable_cache_location_it_compiles_uncached_and_says_so(
        monkeypatch, caplog):
    # what numba does in a read-only image without NUMBA_CACHE_DIR: no cache locator at all
    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])
    with pytest.raises(RuntimeError, match="no locator available"):
        from numba import njit
        njit("f8[::1](f8[::1], f8)", cache=True)(_scale)
    with caplog.at_level(logging.WARNING, logger="features.jit"):
        fn = compiled("f8[::1](f8[::1], f8)")(_scale)
    assert fn(np.arange(2.0), 3.0).tolist() == [0.0, 3.0]
    assert "NUMBA_CACHE_DIR" in caplog.text and "_scale" in caplog.text


def test_an_inlined_helper_needs_no_cache_of_its_own(monkeypatch):
    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])  # as in a read-only image

    @inlined
    def double(x: float) -> float:
        return 2.0 * x

    def scaled(a: np.ndarray) -> np.ndarray:
        out = np.empty_like(a)
        for i in range(a.shape[0]):
            out[i] = double(a[i])
        return out

    fn = compiled("f8[::1](f8[::1])")(scaled)
    assert fn(np.arange(3.0)).tolist() == [0.0, 2.0, 4.0]
