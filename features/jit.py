"""Compilation of the project's numba kernels (the features kernel and the candle step's loops).

`compiled(signature)` compiles a function for one explicit signature when its module is
imported, with the GIL released while it runs. The machine code is cached on disk (next to
the source, or under NUMBA_CACHE_DIR), so later processes load it in milliseconds. Where no
cache location is writable (a read-only image without NUMBA_CACHE_DIR), numba would refuse to
cache and raise; the kernel is then compiled without a cache, once per process, and a warning
says how to keep it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from numba import njit, types

log = logging.getLogger(__name__)
Kernel = Callable[..., Any]  # a numba dispatcher: its arguments are checked by `signature`


def compiled(signature: Any) -> Callable[[Kernel], Kernel]:
    """Decorator: `fn` compiled by numba for `signature` (eagerly, cached when possible)."""

    def wrap(fn: Kernel) -> Kernel:
        try:
            return njit(signature, cache=True, nogil=True)(fn)  # type: ignore[no-any-return]
        except RuntimeError as e:  # "cannot cache function ...: no locator available"
            log.warning("compiling %s without a disk cache (%s); set NUMBA_CACHE_DIR to a "
                        "writable directory to keep the compiled code", fn.__qualname__, e)
            return njit(signature, nogil=True)(fn)  # type: ignore[no-any-return]

    return wrap


def inlined(fn: Kernel) -> Kernel:
    """Decorator: a small helper of compiled kernels, inlined into each caller's code (numba
    IR inlining) and so compiled and cached with them; it needs no cache of its own."""
    return njit(inline="always")(fn)  # type: ignore[no-any-return]


def array_type(dtype: Any, readonly: bool = False) -> Any:
    """numba's type of a 1-D C-contiguous array of `dtype`; `readonly` for arrays that may be
    views of Arrow buffers (a writable array is accepted there too)."""
    return types.Array(dtype, 1, "C", readonly=readonly)
