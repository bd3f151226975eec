"""The offline side of a domain: its commands and how first start trains its default model.

``training/domains/<name>/__init__.py`` defines ``TRAINING``, a :class:`DomainTraining`, for the service
domain of the same name (:mod:`service.domains`); :mod:`training.domains` finds it by that name, so the
list of domains is written once, on the service side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from service.core.devices import DeviceCatalog
from service.core.model import TabularModel
from service.core.settings import Settings

# A typer command: its parameters are the command's options.
Command = Callable[..., None]


def _trainable(settings: Settings) -> str | None:
    return None


def _never_stale(model: TabularModel, settings: Settings) -> str | None:
    return None


@dataclass
class Chunk:
    """A chunk's scored rows (in the table's output schema) and the rows refused, each with its row
    number, field(s) and reason."""

    table: pa.Table
    errors: list[tuple[int, str, str]]


@dataclass(frozen=True)
class TableScorer:
    """How ``perfcost score`` turns a table of a domain's instances into predictions, as its native
    route would answer each row."""

    # Raises ValueError naming the columns the domain's instances do not have.
    check_columns: Callable[[list[str]], None]
    # The scored table's columns, given the input's.
    output_schema: Callable[[list[str]], pa.Schema]
    # Validate and predict a chunk of rows numbered from ``first_row``, at a coverage.
    score_chunk: Callable[[pd.DataFrame, int, float, TabularModel, DeviceCatalog], Chunk]


@dataclass(frozen=True)
class DomainTraining:
    # ``perfcost train <name>`` and ``perfcost evaluate <name>``.
    train: Command
    evaluate: Command
    # Trains and publishes the default model first start serves; returns what it was trained on.
    first_start: Callable[[Settings], str]
    # Why the default model cannot be trained here (None: it can), e.g. its data is not cached.
    why_not: Callable[[Settings], str | None] = _trainable
    # Why a served model is out of date with the data on disk (None: it is not).
    stale: Callable[[TabularModel, Settings], str | None] = _never_stale
    # ``perfcost calibrate <name>``, for domains whose models adapt to a user's own measurements.
    calibrate: Command | None = None
    # ``perfcost score --domain <name>``, for domains whose instances are rows of a table.
    table: TableScorer | None = None
