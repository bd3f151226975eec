"""Corrections for calibrated groups: a group seen in only a few training rows (a device a user measured
the calibration sweep on) gets its predictions corrected by a small boosted model of the log error, fit
on those rows, and intervals calibrated the way such a group meets them (:func:`calibrated_residuals`).

:func:`calibrated_groups` says which groups those are, :func:`fit_correction` and
:func:`apply_correction` fit and apply one group's correction, and :func:`save_corrections` writes them
as the ONNX files the service applies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from training.core.candidates import tree_input
from training.core.onnx_export import lightgbm_onnx

# A group with fewer training rows than this, and than a tenth of the median group's, is "calibrated": its
# predictions get a correction fit on its own rows, and the calibrated intervals (in a small training set
# where every device has few rows, none is). Each held-out group of the calibrated CV lends this many of its
# rows to fit the correction (the shipped calibration sweep has 32 shapes) and is scored on the rest.
CALIBRATED_MAX_ROWS = 256
CALIBRATION_ROWS = 32
# A correction is a small boosted model of the log error on a few columns, fit on ~32 rows: 50 trees of 4
# leaves, each leaf holding 5 rows or more. On leave-one-GPU-out errors of aiconfigurator (30k rows, 7
# GPUs, 32 random rows of the held-out GPU to fit on), it cut the MAPE on the rest from 28.2% to 21.1%,
# where a log offset (32.3%), an offset and a slope in the reference time (28.9%), per-dtype offsets and
# ridge or Huber fits on three columns and the dtype (26.4-29.6%) did not pay: the errors are not linear.
CORRECTION_TREES: dict[str, Any] = {
    "n_estimators": 50,
    "learning_rate": 0.1,
    "num_leaves": 4,
    "min_child_samples": 5,
}


def fit_correction(error: np.ndarray, X: pd.DataFrame, increasing: tuple[str, ...] = ()) -> lgb.LGBMRegressor:
    """A group's correction from its rows: a small boosted model of the log error (measured - predicted)
    on the columns of ``X`` (see :data:`CORRECTION_TREES`), fit on float32 like every tree here, never
    decreasing in the ``increasing`` columns (so that a corrected model keeps its monotone guarantee)."""
    monotone = [1 if c in increasing else 0 for c in X.columns]
    return lgb.LGBMRegressor(**CORRECTION_TREES, monotone_constraints=monotone, n_jobs=1, verbose=-1).fit(
        tree_input(X), error
    )


def apply_correction(correction: lgb.LGBMRegressor, X: pd.DataFrame) -> np.ndarray:
    """The log-scale correction of each row of ``X`` (the columns it was fit on)."""
    return np.asarray(correction.predict(tree_input(X)), dtype=float)


def calibrated_residuals(
    residual: np.ndarray,
    X: pd.DataFrame,
    groups: np.ndarray,
    rows: int,
    random_state: int,
    increasing: tuple[str, ...] = (),
) -> np.ndarray:
    """Held-out-group residuals as a calibrated group meets them: per group, a correction fit on ``rows``
    of its residuals (seeded), applied to the others; NaN for the rows that fit it."""
    out = np.full(len(residual), np.nan)
    rng = np.random.default_rng(random_state)
    for group in np.unique(groups):
        members = np.flatnonzero((groups == group) & np.isfinite(residual))
        if len(members) < 2 * rows:
            continue
        shots = rng.choice(members, rows, replace=False)
        rest = np.setdiff1d(members, shots)
        correction = fit_correction(-residual[shots], X.iloc[shots], increasing)
        out[rest] = residual[rest] + apply_correction(correction, X.iloc[rest])
    return out


def calibrated_groups(groups: np.ndarray) -> np.ndarray:
    """The calibrated groups among ``groups`` (sorted): those with fewer rows than
    :data:`CALIBRATED_MAX_ROWS` and than a tenth of the median group's."""
    names, counts = np.unique(groups, return_counts=True)
    return names[counts < min(CALIBRATED_MAX_ROWS, 0.1 * np.median(counts))]


def save_corrections(
    corrections: dict[str, lgb.LGBMRegressor], folder: Path, stem: str
) -> dict[str, dict[str, str]]:
    """Each group's correction as an ONNX file in ``folder`` (its inputs named in it); the card entry."""
    out = {}
    for i, (name, correction) in enumerate(sorted(corrections.items())):
        filename = f"{stem}.correction{i}.onnx"
        (folder / filename).write_bytes(lightgbm_onnx(correction.booster_))
        out[name] = {"onnx": filename}
    return out
