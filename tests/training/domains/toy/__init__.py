"""The offline side of the toy domain (:mod:`tests.service.domains.toy`): measurements of a loop, a fit
and a publish through the card writer, which checks the card against the domain's card type."""

from __future__ import annotations

import numpy as np
import pandas as pd

from service.core.settings import Settings
from tests.service.domains.toy import COLUMNS, DEVICE, DOMAIN
from training.core.domain import DomainTraining
from training.core.models import CostRegressor
from training.core.publish import publish


def measurements(rows: int = 400, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Loop sizes and their log runtimes (3 ns an iteration, 2% noise)."""
    rng = np.random.default_rng(seed)
    n = 10 ** rng.uniform(3, 9, rows)
    runtime_ms = 3e-6 * n * rng.lognormal(0.0, 0.02, rows)
    return pd.DataFrame({COLUMNS[0]: np.log(n)}), np.log(runtime_ms)


def first_start(settings: Settings) -> str:
    X, y = measurements()
    model = CostRegressor(candidates=("lightgbm",), n_splits=3, regimes=("seen",), n_jobs=1).fit(X, y)
    card = {"largest_n": float(np.exp(X[COLUMNS[0]].max()))}
    publish(settings.model_dir, DOMAIN.name, DOMAIN, card, {"runtime_ms": (model, {"devices": [DEVICE]})})
    return f"trained on {len(y)} loop measurements"


def _no_command() -> None:
    """The toy has no command line of its own."""


TRAINING = DomainTraining(train=_no_command, evaluate=_no_command, first_start=first_start)
