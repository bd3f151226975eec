"""What loading a dataset kept and rejected: every loader counts malformed rows by reason, with the first
few places of each, instead of dropping them silently."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table

log = logging.getLogger(__name__)


# How a table (CSV text, or a number) spells a boolean field.
BOOLEAN_TEXT = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}


def parse_boolean(value: Any) -> bool | None:
    """A table cell as a boolean; None when it spells none (the caller says why it refuses it)."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    return BOOLEAN_TEXT.get(str(value).strip().lower())


@dataclass
class LoadReport:
    """Rows kept and rows rejected, by reason, with the first few line numbers of each reason; and where a
    loader keeps a chosen part of valid rows (a default training set), what it chose and why, as JSON."""

    dataset: str
    rows: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    selection: dict[str, Any] | None = None

    def reject(self, reason: str, where: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 5:
            shown.append(where)

    def summary(self) -> str:
        if not self.rejected:
            return "no rows rejected"
        return "; ".join(f"{count} {reason}" for reason, count in sorted(self.rejected.items()))

    def table(self) -> Table:
        """The rejected rows by reason, with the first rows of each, for a terminal."""
        table = Table(title=f"{self.dataset}: {self.rows} rows kept, {sum(self.rejected.values())} rejected")
        for column in ("reason", "rows", "first rows"):
            table.add_column(column)
        for reason, count in sorted(self.rejected.items()):
            table.add_row(reason, str(count), "\n".join(self.examples[reason]))
        return table

    def log(self) -> None:
        log.info("%s: %d rows loaded", self.dataset, self.rows)
        for reason, count in sorted(self.rejected.items()):
            log.warning(
                "%s: %d rows rejected (%s), e.g. %s",
                self.dataset,
                count,
                reason,
                "; ".join(self.examples[reason]),
            )


def positive_mask(
    frame: pd.DataFrame, cols: Sequence[str], report: LoadReport, where: pd.Series
) -> pd.Series:
    """Rows whose every column in ``cols`` is a finite number > 0; the others are rejected by reason,
    located by ``where`` (a label per row, e.g. its line)."""
    keep = pd.Series(True, index=frame.index)
    for col in cols:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = ~(np.isfinite(values) & (values > 0))
        for idx in frame.index[bad & keep]:
            report.reject(f"{col} missing, non-numeric or <= 0", f"{where[idx]}: {frame.at[idx, col]!r}")
        keep &= ~bad
    return keep
