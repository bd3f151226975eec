"""A cost model fit in two parts along one column, joined so that monotone constraints hold for the whole."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils import Tags
from sklearn.utils.validation import check_is_fitted

from service.core.targets import calibration_grid, split_cap
from training.core.candidates import CANDIDATES
from training.core.models import CostRegressor, validated_frame


class SplitRegressor(RegressorMixin, BaseEstimator):
    """Two :class:`CostRegressor` fits, one on the rows whose ``column`` is below ``value`` and one on the
    others; each predicts its own rows, and a row below the split (from ``column = capped_from`` on, if
    given) is never predicted above the upper model's prediction for it at ``column = value`` (``at_split``
    maps feature rows there). With each part monotone in the ``increasing`` columns, so is the whole (from
    ``capped_from`` on).

    Why: a monotone constraint binds a tree everywhere at once, so a regime whose cost barely moves with
    the column (GEMMs with a small k: the call and the write of C) held the whole fit back. The split is
    made only where each part has ``min_rows`` rows and, when the whole spans three groups or more, three
    groups too, so that both can be calibrated for unseen groups; otherwise one CostRegressor fits every
    row. The groups the lower part saw are recorded (``below_groups_``): a row below the split on a group
    it never saw is calibrated as unseen.

    Like its parts it takes a DataFrame or any array-like, whose columns are then ``x0``, ``x1``, ... (see
    :func:`training.core.models.validated_frame`), and ``column`` and the other options name them.
    """

    def __init__(
        self,
        column: str,
        value: float,
        at_split: Callable[[np.ndarray, float], np.ndarray],
        select_by: str | tuple[str, ...] = "seen",
        increasing: tuple[str, ...] = (),
        regimes: tuple[str, ...] = ("seen", "unseen"),
        baseline: str | None = None,
        floor: str | None = None,
        min_rows: int = 30,
        capped_from: float | None = None,
        inputs: tuple[str, ...] | None = None,
        relative: bool | None = None,
        candidates: tuple[str, ...] = CANDIDATES,
        correct_on: tuple[str, ...] | None = None,
    ) -> None:
        self.correct_on = correct_on
        self.inputs = inputs
        self.relative = relative
        self.candidates = candidates
        self.column = column
        self.value = value
        self.at_split = at_split
        self.capped_from = capped_from
        self.select_by = select_by
        self.increasing = increasing
        self.regimes = regimes
        self.baseline = baseline
        self.floor = floor
        self.min_rows = min_rows

    def _part(self) -> CostRegressor:
        return CostRegressor(
            candidates=self.candidates,
            inputs=self.inputs,
            relative=self.relative,
            correct_on=self.correct_on,
            select_by=self.select_by,
            increasing=self.increasing,
            regimes=self.regimes,
            baseline=self.baseline,
            floor=self.floor,
        )

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # as its parts (CostRegressor): trees take NaN features
        return tags

    def fit(self, X: Any, y: Any, groups: np.ndarray | None = None) -> SplitRegressor:
        X, y = validated_frame(self, X, y, y_numeric=True, ensure_all_finite="allow-nan")
        y = np.asarray(y, dtype=float)
        below = X[self.column].to_numpy(dtype=float) < self.value
        # Held-out-group calibration needs three groups: a part must have them wherever the whole does.
        needed = min(3, len(np.unique(groups))) if groups is not None else 0

        def enough(rows: np.ndarray) -> bool:
            if rows.sum() < self.min_rows:
                return False
            return groups is None or len(np.unique(groups[rows])) >= needed

        self.split_ = bool(enough(below) and enough(~below))
        upper = ~below if self.split_ else np.ones(len(y), dtype=bool)
        self.upper_ = self._part().fit(X.loc[upper], y[upper], None if groups is None else groups[upper])
        self.lower_ = (
            self._part().fit(X.loc[below], y[below], None if groups is None else groups[below])
            if self.split_
            else None
        )
        if self.lower_ is not None:
            self._calibrate_capped(self.lower_, X.loc[below], y[below])
        self.best_name_ = self.upper_.best_name_
        self.below_groups_ = (
            sorted(map(str, np.unique(groups[below]))) if groups is not None and self.split_ else []
        )
        return self

    def _cap(self, part: pd.DataFrame, groups: np.ndarray | None = None) -> np.ndarray:
        """Per row below the split: the upper model's log prediction at the split (with the row's group's
        correction), or +inf where uncapped."""
        capped_from = -np.inf if self.capped_from is None else self.capped_from
        matrix = part.to_numpy(dtype=float)
        column = list(part.columns).index(self.column)
        capped = matrix[:, column] >= capped_from
        return split_cap(
            matrix,
            column,
            self.value,
            capped_from,
            self.at_split,
            lambda raised: self.upper_.predict(
                pd.DataFrame(raised, columns=part.columns), None if groups is None else groups[capped]
            ),
        )

    def _calibrate_capped(self, lower: CostRegressor, X: pd.DataFrame, y: np.ndarray) -> None:
        """The lower part's intervals from its out-of-fold predictions as served, i.e. capped. On GPUs the
        upper model at the split ran ~11% below small-k runtimes and capped 74% of them (NeuSight 80/20, n
        and k then swapped), and uncapped calibration covered 57% where 90% was asked. The cap comes from the
        final upper model, so for unseen devices these residuals are, if anything, slightly optimistic."""
        cap = self._cap(X.iloc[lower.cv_rows_])
        target = y[lower.cv_rows_]
        for regime, oof in lower.oof_.items():
            lower.calibration_[regime] = calibration_grid(np.minimum(oof, cap) - target)

    def _below(self, X: pd.DataFrame) -> np.ndarray:
        if self.lower_ is None:
            return np.zeros(len(X), dtype=bool)
        return X[self.column].to_numpy(dtype=float) < self.value

    def predict(self, X: Any, groups: np.ndarray | None = None) -> np.ndarray:
        check_is_fitted(self)
        X, _ = validated_frame(self, X, reset=False, ensure_all_finite="allow-nan")
        out = self.upper_.predict(X, groups)
        below = self._below(X)
        if below.any() and self.lower_ is not None:
            part = X.loc[below]
            part_groups = None if groups is None else np.asarray(groups)[below]
            out[below] = np.minimum(self.lower_.predict(part, part_groups), self._cap(part, part_groups))
        return out

    def halfwidths(self, X: pd.DataFrame, regime: str, coverage: float) -> np.ndarray:
        out = self.upper_.halfwidths(X, regime, coverage)
        below = self._below(X)
        if below.any() and self.lower_ is not None:
            out[below] = self.lower_.halfwidths(X.loc[below], regime, coverage)
        return out

    def card_entry(self, folder: Path, stem: str) -> dict[str, Any]:
        """The upper part's entry, plus the lower part's (with the split) under ``below``."""
        entry = self.upper_.card_entry(folder, stem)
        if self.lower_ is not None:
            entry["below"] = {
                "column": self.column,
                "value": self.value,
                "capped_from": self.capped_from,
                "devices": self.below_groups_,
                **self.lower_.card_entry(folder, f"{stem}.below"),
            }
        return entry
