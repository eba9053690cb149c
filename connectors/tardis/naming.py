"""Tardis downloadable dataset file names, globs and date ranges.

Tardis names files `{exchange}_{data_type}_{YYYY-MM-DD}_{SYMBOL}.csv.gz`; exchanges contain
hyphens and data types underscores (book_snapshot_25, incremental_book_L2), so the date is the
anchor of the parse.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

_NAME_RE = re.compile(
    r"^(?P<exchange>[A-Za-z0-9-]+)_(?P<data_type>[A-Za-z0-9_]+?)_(?P<date>\d{4}-\d{2}-\d{2})_"
    r"(?P<symbol>.+?)(?P<ext>\.csv(?:\.gz)?)$"
)


class InputError(ValueError):
    """Input files that cannot be replayed; the message names the file and the problem."""


@dataclass(frozen=True, order=True)
class TardisFile:
    """One dataset file and what its name says about it."""

    exchange: str
    data_type: str
    symbol: str
    day: date
    path: str

    @property
    def stream(self) -> str:
        """The partition key: files of one stream are replayed in date order."""
        return f"{self.exchange}/{self.data_type}/{self.symbol}"

    @property
    def gzipped(self) -> bool:
        return self.path.endswith(".gz")


def parse_name(path: str | Path) -> TardisFile:
    """Parse a Tardis file name; raises InputError naming the file when it does not match."""
    p = Path(path)
    m = _NAME_RE.match(p.name)
    if not m:
        raise InputError(
            f"{p}: not a Tardis dataset file name; expected "
            "{exchange}_{data_type}_{YYYY-MM-DD}_{SYMBOL}.csv.gz (or .csv)"
        )
    try:
        day = date.fromisoformat(m.group("date"))
    except ValueError:
        raise InputError(f"{p}: invalid date {m.group('date')!r} in the file name") from None
    return TardisFile(m.group("exchange"), m.group("data_type"), m.group("symbol"), day, str(p))


def expand_inputs(
    patterns: Iterable[str],
    from_date: date | None = None,
    to_date: date | None = None,
    data_types: Iterable[str] | None = None,
) -> list[TardisFile]:
    """Expand globs into Tardis files, filtered by the inclusive date range and data types.

    A pattern that matches nothing is an error (a typo must not look like an empty market).
    """
    wanted = set(data_types) if data_types is not None else None
    found: dict[str, TardisFile] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(str(pattern), recursive=True))
        if not matches and Path(pattern).exists():
            matches = [str(pattern)]
        if not matches:
            raise InputError(f"{pattern}: no file matches this input")
        for m in matches:
            if Path(m).is_dir():
                continue
            tf = parse_name(m)
            if from_date and tf.day < from_date or to_date and tf.day > to_date:
                continue
            if wanted is not None and tf.data_type not in wanted:
                continue
            found[str(Path(m).resolve())] = tf
    return sorted(found.values(), key=lambda f: (f.stream, f.day, f.path))


def group_streams(files: Iterable[TardisFile]) -> dict[str, list[TardisFile]]:
    """Files per stream (exchange, data type, symbol), each list in date order."""
    out: dict[str, list[TardisFile]] = {}
    for f in sorted(files, key=lambda f: (f.stream, f.day, f.path)):
        out.setdefault(f.stream, []).append(f)
    return out
