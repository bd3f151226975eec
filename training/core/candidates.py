"""The candidate estimators and their cross-validation.

:func:`make_candidate` configures LightGBM or a random forest for the size of the data it will be
deployed on; trees are fit and predicted on float32 (:func:`tree_input`); :func:`out_of_fold` gives each
row the prediction of the fold model that did not see it. The calibration regimes (:data:`REGIMES`) name
what each cross-validation holds out; the size-extrapolation one's fold is :func:`extrapolation_fold`.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import RandomForestRegressor

CANDIDATES = ("lightgbm", "random_forest")
# Calibration regimes: K-fold (devices seen in training), leave-one-group-out (unseen devices) and
# extrapolation (per group, fit on the rows up to its EXTRAPOLATE_QUANTILE of FLOPs, residuals on the rest:
# what a request larger than anything trained on its device meets).
# And calibrated: a group seen only in a few rows (a device a user measured the calibration sweep on), whose
# predictions the model corrects by those rows (see :func:`training.core.corrections.fit_correction`).
REGIMES = ("seen", "unseen", "extrapolate", "calibrated")
# What each regime's CV holds out, in words that fit every domain's groups (devices, CPU models, families).
REGIME_LABELS = {
    "seen": "K-fold",
    "unseen": "held-out-group",
    "extrapolate": "size-extrapolation",
    "calibrated": "held-out-group+calibration",
}
# The extrapolation regime's split, on the column of a row's size (its log FLOPs).
EXTRAPOLATE_QUANTILE = 0.8
SIZE_COLUMN = "log_flops"


def make_candidate(
    name: str, n_rows: int, random_state: int, monotone: list[int] | None = None, fit_rows: int | None = None
) -> BaseEstimator:
    """A candidate configured for ``n_rows`` of training data (the deployed fit), to be fit on ``fit_rows``
    rows (fewer in cross-validation); ``monotone`` holds +1 (non-decreasing) or 0 per feature column."""
    if name == "lightgbm":
        # Capacity grows with the data: the 241k-row UCI SGEMM grid of 14 tile parameters needs large trees
        # (0.9k rounds of 127 leaves: 5.4% MAPE). Few deep trees beat many shallow ones there, and a row
        # visits fewer nodes, which is what serving a row costs. On 80/20 splits (measured here):
        # - uci-sgemm: 2,000 rounds of 255 leaves 1.92% with 5,535 nodes visited per row; 400 rounds of
        #   2,047 leaves 1.65% with 2,603;
        # - neusight-gemm: 10.04% and 10.12% (read with n and k swapped, before the loader's fix).
        # Such trees need the "intermediate" monotone method: "advanced" took 8.9 s per 2,047-leaf tree on
        # 40k rows of all GEMM data, "intermediate" 0.1 s, and it scored the same on both splits above.
        large = n_rows > 100_000
        return lgb.LGBMRegressor(
            n_estimators=400 if large else 900 if n_rows > 2000 else 400,
            learning_rate=0.1 if large else 0.05,
            num_leaves=2047 if large else 127 if n_rows > 20_000 else 31,
            min_child_samples=5 if n_rows > 2000 else 3,
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=1.0 if large else 0.8,
            # No L2 penalty on large data: 3-fold CV on uci-sgemm's training split (128k-row fits) gave
            # 2.31% MAPE without it, 2.54% with reg_lambda 1 (the test split played no part).
            reg_lambda=0.0 if large else 1.0,
            monotone_constraints=monotone,
            monotone_constraints_method="intermediate" if large else "advanced",
            random_state=random_state,
            # One thread: LightGBM's OpenMP threads spin-wait, and on a busy machine two of them ran
            # 20x slower than one (measured here); the forest below parallelises over trees instead.
            n_jobs=1,
            verbose=-1,
        )
    if name == "random_forest":
        return RandomForestRegressor(
            n_estimators=80,
            max_features=0.5,
            min_samples_leaf=1,
            monotonic_cst=monotone,
            # Bootstrap at most 30k rows per tree keeps 240k-row datasets within minutes on 2 cores.
            max_samples=min(1.0, 30_000 / max(fit_rows or n_rows, 1)),
            random_state=random_state,
            n_jobs=2,
        )
    raise ValueError(f"unknown candidate {name!r}; choose from {CANDIDATES}")


def tree_input(X: pd.DataFrame) -> pd.DataFrame:
    """Features as trees see them: float32, as scikit-learn's trees and the ONNX export compare them.
    Fit and predicted on the same values, LightGBM and its export take the same branch on every row
    (see :func:`~training.core.onnx_export.lightgbm_onnx`); on float64 input, 2 of 5,000 NeuSight rows
    moved by up to 1.3%."""
    return X.astype(np.float32)


def extrapolation_fold(sizes: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per group, rows up to its :data:`EXTRAPOLATE_QUANTILE` of ``sizes`` (train) and above it (test)."""
    groups = np.zeros(len(sizes)) if groups is None else np.asarray(groups)
    threshold = pd.Series(sizes).groupby(groups).transform(lambda v: v.quantile(EXTRAPOLATE_QUANTILE))
    above = sizes > threshold.to_numpy()
    return np.flatnonzero(~above), np.flatnonzero(above)


def out_of_fold(
    estimator: BaseEstimator,
    X: pd.DataFrame,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    n_jobs: int,
) -> np.ndarray:
    """Each row's prediction by the fold model that did not see it; NaN for rows no fold tests (the
    extrapolation fold tests only the largest rows)."""

    def one(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fitted = clone(estimator).fit(X.iloc[train], y[train])
        return test, np.asarray(fitted.predict(X.iloc[test]), dtype=float)

    out = np.full(len(y), np.nan)
    for test, values in Parallel(n_jobs=n_jobs if len(folds) > 1 else 1)(
        delayed(one)(train, test) for train, test in folds
    ):
        out[test] = values
    return out


def ape_of_log(residual: np.ndarray) -> np.ndarray:
    """Absolute percentage error on the original scale from a log-scale residual (pred - true)."""
    return np.abs(np.expm1(residual))
