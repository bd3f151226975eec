"""Model candidates, selection by cross-validation, conformal calibration, and publishing.

:class:`CostRegressor` follows scikit-learn's contract: ``__init__`` stores arguments, ``fit`` returns
``self``, learned state ends in ``_``; its options name columns of X (an array's are x0, x1, ...: see
:func:`validated_frame`). It picks the better of a LightGBM and a random-forest candidate by K-fold CV on
its training data only, keeps the out-of-fold residuals as split-conformal calibration ("seen" devices; on
data too large for full CV, the residuals on held-out rows of a model fit without them instead), and, when
the rows span three or more devices, also runs leave-one-device-out CV for the chosen candidate, to
calibrate devices it never saw ("unseen"). Folds and the final fits run in parallel processes (``n_jobs``).
Columns named in ``increasing`` are monotone constraints: the prediction never decreases as one of them
grows. A column named as ``baseline`` holds a log-scale baseline (e.g. a roofline time): each candidate is
also cross-validated learning the target minus it (predictions add it back), and CV decides which is used,
unless ``relative`` fixes the form (True: always relative to the baseline). ``inputs`` names the columns
the trees see (default all); the baseline and floor columns need not be among them, so that a domain can
keep absolute figures (a device's peak, a time) out of the trees and learn a dimensionless ratio.
The candidates and their cross-validation live in :mod:`training.core.candidates`, the corrections of
calibrated groups in :mod:`training.core.corrections`.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.model_selection import GroupKFold, KFold
from sklearn.utils import Tags
from sklearn.utils.validation import check_is_fitted, validate_data

from service.core.targets import calibration_grid, forest_predict, halfwidth, served_log
from training.core.candidates import (
    CANDIDATES,
    REGIME_LABELS,
    REGIMES,
    SIZE_COLUMN,
    ape_of_log,
    extrapolation_fold,
    make_candidate,
    out_of_fold,
    tree_input,
)
from training.core.cluster import active_client, fit_estimator
from training.core.corrections import (
    CALIBRATION_ROWS,
    apply_correction,
    calibrated_groups,
    calibrated_residuals,
    fit_correction,
    save_corrections,
)
from training.core.onnx_export import lightgbm_onnx

log = logging.getLogger(__name__)


def _column(X: pd.DataFrame, name: str | None) -> np.ndarray | None:
    """A baseline or floor column's values, or None without one."""
    return X[name].to_numpy(dtype=float) if name is not None else None


def _or_zero(values: np.ndarray | None) -> np.ndarray | float:
    return 0.0 if values is None else values


def fitted_columns(estimator: BaseEstimator) -> list[str]:
    """The names of the columns ``estimator`` was fit on: its DataFrame's, or ``x0``, ``x1``, ... for an
    array without names (so that options naming columns, ``baseline="x2"`` say, work on arrays too)."""
    names = getattr(estimator, "feature_names_in_", None)
    return list(names) if names is not None else [f"x{i}" for i in range(estimator.n_features_in_)]


def validated_frame(
    estimator: BaseEstimator, X: Any, y: Any = "no_validation", reset: bool = True, **check: Any
) -> tuple[pd.DataFrame, Any]:
    """``X`` (and ``y``) through scikit-learn's :func:`validate_data` (which records ``n_features_in_`` and
    ``feature_names_in_`` on ``reset``, and checks them otherwise), with ``X`` as a DataFrame of
    :func:`fitted_columns`. A DataFrame that has them goes on as it is, so that what is fit and predicted on
    the project's tables stays exactly what it was; other array-likes are wrapped. ``y`` comes back checked
    (None where it was left out: predict)."""
    checked = validate_data(estimator, X, y, reset=reset, **check)
    array, y = (checked, None) if isinstance(y, str) else checked
    columns = fitted_columns(estimator)
    if isinstance(X, pd.DataFrame) and list(X.columns) == columns:
        return X, y
    return pd.DataFrame(array, columns=columns), y


class CostRegressor(RegressorMixin, BaseEstimator):
    """Regressor on a log-scale target with CV model selection and conformal calibration."""

    def __init__(
        self,
        candidates: tuple[str, ...] = CANDIDATES,
        n_splits: int = 5,
        select_by: str | tuple[str, ...] = "seen",
        max_cv_rows: int = 40_000,
        group_folds: int | None = None,
        increasing: tuple[str, ...] = (),
        regimes: tuple[str, ...] = ("seen", "unseen"),
        baseline: str | None = None,
        floor: str | None = None,
        inputs: tuple[str, ...] | None = None,
        relative: bool | None = None,
        correct_on: tuple[str, ...] | None = None,
        random_state: int = 0,
        n_jobs: int = -1,
    ) -> None:
        self.correct_on = correct_on
        self.candidates = candidates
        self.inputs = inputs
        self.relative = relative
        self.n_splits = n_splits
        self.select_by = select_by
        self.max_cv_rows = max_cv_rows
        self.group_folds = group_folds
        self.increasing = increasing
        self.regimes = regimes
        self.baseline = baseline
        self.floor = floor
        self.random_state = random_state
        self.n_jobs = n_jobs

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        # NaN is a feature value, not an error: trees send it down a branch of their own (GEMM features are
        # NaN where a figure does not apply to a device). Infinity is refused.
        tags.input_tags.allow_nan = True
        return tags

    def fit(self, X: Any, y: Any, groups: np.ndarray | None = None) -> CostRegressor:
        X, y = validated_frame(self, X, y, y_numeric=True, ensure_all_finite="allow-nan")
        y = np.asarray(y, dtype=float)
        monotone = self._checked_monotone(X, len(y))
        n = len(y)
        # Selection and calibration run on a seeded subsample of large data so that CV stays within
        # minutes; the chosen candidate is then refit on every row. Residuals of models fit on fewer rows
        # are, if anything, larger, so the intervals err wide rather than narrow.
        cv_idx = np.arange(n)
        if n > self.max_cv_rows:
            cv_idx = np.sort(
                np.random.default_rng(self.random_state).choice(n, self.max_cv_rows, replace=False)
            )
        regimes = self._folds(X.iloc[cv_idx], y[cv_idx], groups[cv_idx] if groups is not None else None, n)
        oofs = self._select(X, y, cv_idx, regimes, monotone)
        if "calibrated" in self.regimes and self.correct_on is not None and "unseen" in oofs:
            oofs["calibrated"] = calibrated_residuals(
                oofs["unseen"],
                X.iloc[cv_idx].loc[:, list(self.correct_on)],
                np.asarray(groups)[cv_idx],
                CALIBRATION_ROWS,
                self.random_state,
                self.increasing,
            )
            if not np.isfinite(oofs["calibrated"]).any():
                del oofs["calibrated"]
        self.calibration_ = {regime: calibration_grid(res) for regime, res in oofs.items()}
        # Out-of-fold predictions of the chosen form (rows ``cv_rows_``), for a caller that post-processes
        # predictions and must calibrate what it serves (SplitRegressor's cap).
        self.cv_rows_ = cv_idx
        self.oof_ = {regime: res + y[cv_idx] for regime, res in oofs.items()}
        self._fit_deployed(X, y, monotone)
        self.corrections_ = self._corrections(X, y, groups)
        return self

    def _corrections(self, X: pd.DataFrame, y: np.ndarray, groups: np.ndarray | None) -> dict[str, Any]:
        """Per calibrated group (see :func:`calibrated_groups`), its correction from the deployed
        model's errors on them (trees fit on a whole dataset barely move for 32 rows of one more device;
        the correction is what those rows teach). None without ``correct_on`` or groups."""
        if self.correct_on is None or groups is None or "calibrated" not in self.calibration_:
            return {}
        groups = np.asarray(groups)
        few = calibrated_groups(groups)
        if not len(few):
            return {}
        rows = np.flatnonzero(np.isin(groups, few))
        part = X.iloc[rows]
        error = y[rows] - self.predict(part, corrected=False)
        inputs = part.loc[:, list(self.correct_on or ())]
        own = groups[rows]
        return {
            str(name): fit_correction(error[own == name], inputs.loc[own == name], self.increasing)
            for name in few
        }

    def _checked_monotone(self, X: pd.DataFrame, n: int) -> list[int] | None:
        """The monotone constraint per column of ``X``, after checking the arguments against ``X``."""
        for regime in self._select_regimes():
            if regime not in REGIMES or regime not in self.regimes:
                raise ValueError(
                    f"select_by must name computed regimes ({self.regimes}), got {self.select_by!r}"
                )
        unknown = sorted(set(self.increasing) - set(X.columns))
        if unknown:
            raise ValueError(f"increasing names columns X does not have: {unknown}")
        missing = sorted(set(self.inputs or ()) - set(X.columns))
        if missing:
            raise ValueError(f"inputs names columns X does not have: {missing}")
        if self.relative and self.baseline is None:
            raise ValueError("relative=True needs a baseline column")
        for role, column in (("baseline", self.baseline), ("floor", self.floor)):
            if column is not None and column not in X.columns:
                raise ValueError(f"{role} names a column X does not have: {column!r}")
        if n < 10:
            raise ValueError(f"need at least 10 rows to fit, got {n} sample(s)")
        columns = self.inputs or tuple(X.columns)
        return [1 if c in self.increasing else 0 for c in columns] if self.increasing else None

    def _folds(
        self, X_cv: pd.DataFrame, y_cv: np.ndarray, g_cv: np.ndarray | None, n: int
    ) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
        """The CV folds of each regime that can be computed on these rows (``n``: all rows, before any
        subsample)."""
        # Three folds on a subsample: the deployed-size LightGBM (2,000 rounds) makes each fold cost ~40 s
        # here, and five folds in each of two regimes pushed training on every GEMM dataset past 10 min.
        n_splits = min(self.n_splits if n <= self.max_cv_rows else 3, len(X_cv))
        regimes = {}
        if "seen" in self.regimes:
            regimes["seen"] = list(KFold(n_splits, shuffle=True, random_state=self.random_state).split(X_cv))
        n_groups = len(np.unique(g_cv)) if g_cv is not None else 0
        if n_groups >= 3 and "unseen" in self.regimes:
            # Leave one device out; at most four folds on a subsample, five on full data (or group_folds).
            folds = min(n_groups, self.group_folds or (4 if n > self.max_cv_rows else 5))
            regimes["unseen"] = list(GroupKFold(folds).split(X_cv, y_cv, g_cv))
        if "extrapolate" in self.regimes and SIZE_COLUMN in X_cv.columns:
            train_part, test_part = extrapolation_fold(X_cv[SIZE_COLUMN].to_numpy(dtype=float), g_cv)
            # One size only (UCI SGEMM is all 2048^3): nothing to extrapolate to, so no such calibration.
            if min(len(train_part), len(test_part)) >= 10:
                regimes["extrapolate"] = [(train_part, test_part)]
        if self._select_regimes()[0] not in regimes:
            raise ValueError(
                f"select_by={self.select_by!r} cannot be computed here (unseen needs rows from at least "
                f"three devices, extrapolate a {SIZE_COLUMN} column)"
            )
        return regimes

    def _select(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        cv_idx: np.ndarray,
        regimes: dict[str, list[tuple[np.ndarray, np.ndarray]]],
        monotone: list[int] | None,
    ) -> dict[str, np.ndarray]:
        """Score every candidate in the selecting regime, keep the best (``best_name_``, ``baseline_``) and
        return its out-of-fold log residuals in every regime."""
        # Each candidate learns the target as it is and, given a baseline column, relative to it (on
        # one RTX 4070's CUTLASS kernels the roofline ratio doubled LightGBM's error; on numpy's CPU GEMMs
        # it cut it by a tenth), labelled "name" and "name+column".
        variants: dict[str, tuple[str, str | None]] = {}
        if not self.relative:
            variants = {name: (name, None) for name in self.candidates}
        if self.baseline is not None and self.relative is not False:
            variants |= {f"{name}+{self.baseline}": (name, self.baseline) for name in self.candidates}
        self.cv_scores_: dict[str, dict[str, dict[str, float]]] = {label: {} for label in variants}
        oofs: dict[str, dict[str, np.ndarray]] = {label: {} for label in variants}
        X_cv, y_cv, trees_cv = X.iloc[cv_idx], y[cv_idx], self._tree_input(X).iloc[cv_idx]

        def cross_validate(label: str, regime: str) -> None:
            name, baseline = variants[label]
            # Configured for the full data, so CV scores the very estimator that would be deployed.
            estimator = make_candidate(name, len(y), self.random_state, monotone, fit_rows=len(cv_idx))
            base = _column(X_cv, baseline)
            started = time.perf_counter()
            # Folds fit in parallel processes, each LightGBM on one thread (see make_candidate).
            oof = out_of_fold(estimator, trees_cv, y_cv - _or_zero(base), regimes[regime], self.n_jobs)
            residual = served_log(oof, base, self._floor_of(X_cv)) - y_cv
            oofs[label][regime] = residual
            ape = ape_of_log(residual[np.isfinite(residual)])
            self.cv_scores_[label][regime] = {
                "mape": float(np.mean(ape)),
                "median_ape": float(np.median(ape)),
                "seconds": round(time.perf_counter() - started, 1),
            }
            mape = self.cv_scores_[label][regime]["mape"]
            log.info("  %s %s CV: MAPE %.4f", label, REGIME_LABELS[regime], mape)

        # Selection by the mean MAPE over the selecting regimes these rows allow (the first always does).
        selecting = [regime for regime in self._select_regimes() if regime in regimes]
        for label in variants:
            for regime in selecting:
                cross_validate(label, regime)

        def score(label: str) -> float:
            return float(np.mean([self.cv_scores_[label][regime]["mape"] for regime in selecting]))

        best = min(variants, key=score)
        self.best_name_, self.baseline_ = variants[best]
        # The other regimes only calibrate the chosen candidate's intervals, so the others skip them (on
        # all GEMM data, the random forest's leave-one-device-out folds were a minute of unused work).
        for regime in regimes:
            if regime not in selecting:
                cross_validate(best, regime)
        return oofs[best]

    def _tree_input(self, X: pd.DataFrame) -> pd.DataFrame:
        """The columns the trees see (``inputs``, default every column of the fit), as :func:`tree_input`."""
        return tree_input(X.loc[:, list(self.inputs or fitted_columns(self))])

    def _select_regimes(self) -> tuple[str, ...]:
        return (self.select_by,) if isinstance(self.select_by, str) else tuple(self.select_by)

    def _fit_deployed(self, X: pd.DataFrame, y: np.ndarray, monotone: list[int] | None) -> None:
        """Fit the chosen form on every row (``estimator_``); on large data, recalibrate the seen regime
        by split conformal."""
        n = len(y)
        trees = self._tree_input(X)
        # The chosen form's estimator learns what its baseline (if any) does not explain.
        y = y - _or_zero(_column(X, self.baseline_))
        fit_idx = np.arange(n)
        held = np.array([], dtype=int)
        if n > self.max_cv_rows and "seen" in self.calibration_:
            # CV ran on a subsample, so its residuals come from models fit on a fraction of the rows and
            # are larger than the deployed model's (uci-sgemm: 0.994 coverage asked 0.9). Split conformal
            # instead: the deployed model never sees a held-out part, and calibrates on its own residuals.
            held = np.random.default_rng(self.random_state + 1).choice(
                n, min(self.max_cv_rows // 2, n // 10), replace=False
            )
            fit_idx = np.setdiff1d(fit_idx, held)
        # On large data the deployed model is fit on every row, next to (in parallel with) one that leaves
        # the calibration rows out (uci-sgemm: 1.92% MAPE instead of 2.00% for the held-out model alone);
        # the full fit's errors are no larger than the held-out one's, so the intervals err wide if at all.
        fits = [np.arange(n), fit_idx] if len(held) else [fit_idx]
        build = partial(make_candidate, self.best_name_, n, self.random_state, monotone)
        if active_client() is not None and self.best_name_ == "lightgbm":
            # On a cluster each LightGBM fit spans all its workers, so the fits run one after the other.
            fitted = [fit_estimator(build(), trees.iloc[idx], y[idx]) for idx in fits]
        else:
            fitted = Parallel(n_jobs=self.n_jobs if len(fits) > 1 else 1)(
                delayed(build().fit)(trees.iloc[idx], y[idx]) for idx in fits
            )
        self.estimator_ = fitted[0]
        if len(held):
            part = X.iloc[held]
            base_held = _column(part, self.baseline_)
            own = self._predict_with(fitted[1], part)
            residual = served_log(own, base_held, self._floor_of(part)) - (y[held] + _or_zero(base_held))
            self.calibration_["seen"] = calibration_grid(residual)

    def _predict_with(self, estimator: BaseEstimator, X: pd.DataFrame) -> np.ndarray:
        """The estimator's own output: the log target less the chosen baseline, if any."""
        features = self._tree_input(X)
        if self.best_name_ == "random_forest":
            return forest_predict(estimator, features.to_numpy())
        return np.asarray(estimator.predict(features), dtype=float)

    def _floor_of(self, X: pd.DataFrame) -> np.ndarray | None:
        """The floor column's values (a log time no run can beat, e.g. the roofline), if one is set."""
        return _column(X, self.floor)

    def predict(self, X: Any, groups: np.ndarray | None = None, corrected: bool = True) -> np.ndarray:
        """Log predictions; rows of a calibrated group (``groups``) with its correction."""
        check_is_fitted(self)
        X, _ = validated_frame(self, X, reset=False, ensure_all_finite="allow-nan")
        own = self._predict_with(self.estimator_, X)
        correction = None
        if corrected and groups is not None and self.corrections_ and self.correct_on is not None:
            inputs = X.loc[:, list(self.correct_on)]
            for name, head in self.corrections_.items():
                rows = np.flatnonzero(np.asarray(groups) == name)
                if len(rows):
                    correction = np.zeros(len(X)) if correction is None else correction
                    correction[rows] = apply_correction(head, inputs.iloc[rows])
        return served_log(own, _column(X, self.baseline_), self._floor_of(X), correction)

    def save(self, folder: Path, stem: str) -> dict[str, str]:
        """Write the fitted estimator and return the card entries naming its files: LightGBM as its text
        model (``file``) plus the ONNX export the service runs (``onnx``), a forest as a joblib file."""
        if self.best_name_ == "lightgbm":
            booster = self.estimator_.booster_
            booster.save_model(str(folder / f"{stem}.lgb.txt"))
            (folder / f"{stem}.onnx").write_bytes(lightgbm_onnx(booster))
            return {"file": f"{stem}.lgb.txt", "onnx": f"{stem}.onnx"}
        joblib.dump(self.estimator_, folder / f"{stem}.rf.joblib", compress=3)
        return {"file": f"{stem}.rf.joblib"}

    def card_entry(self, folder: Path, stem: str) -> dict[str, Any]:
        """Write the model's files into ``folder`` and return its entry in the card."""
        return {
            **self.save(folder, stem),
            "estimator": self.best_name_,
            "baseline": self.baseline_,
            "floor": self.floor,
            "corrections": save_corrections(self.corrections_, folder, stem),
            "cv": self.cv_scores_,
            "calibration": self.calibration_,
        }

    def halfwidths(self, X: pd.DataFrame, regime: str, coverage: float) -> np.ndarray:
        """Log-scale interval half-width per row of ``X`` for the calibration ``regime``."""
        return np.full(len(X), halfwidth(self.calibration_[regime], coverage))
