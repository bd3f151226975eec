"""The fit-like classes keep scikit-learn's estimator contract, checked by scikit-learn's own estimator checks
(small configurations: one candidate, few folds, one process where the class takes ``n_jobs``).

Their options name columns; on an array without names those are ``x0``, ``x1``, ..., so the checks' arrays
are configured by those names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.utils.estimator_checks import (
    check_dataframe_column_names_consistency,
    parametrize_with_checks,
)

from training.core.models import CostRegressor
from training.core.split_regressor import SplitRegressor
from training.domains.mlir.train import BaselineFit


class AtSplit:
    """The rows with the split column (the first) set to the split value: a class at module level, so that
    it pickles, with a repr of its own, so that the test ids stay the same from run to run."""

    def __call__(self, matrix: np.ndarray, value: float) -> np.ndarray:
        out = np.array(matrix, dtype=float, copy=True)
        out[:, 0] = value
        return out

    def __repr__(self) -> str:
        return "AtSplit()"


def cost(**options: object) -> CostRegressor:
    return CostRegressor(candidates=("lightgbm",), n_splits=2, regimes=("seen",), n_jobs=1, **options)


def split(column: str = "x0") -> SplitRegressor:
    # Split at 1.0: the checks' data are mostly uniform on [0, 3) or normal, so many fits do split. A part
    # needs 10 rows (CostRegressor's least), and is monotone in the split column, as the GEMM runtime is.
    return SplitRegressor(
        column, 1.0, AtSplit(), increasing=(column,), regimes=("seen",), min_rows=10, candidates=("lightgbm",)
    )


def baseline_fit(columns: tuple[str, str, str] = ("x0", "x1", "x0")) -> BaselineFit:
    # Some checks fit two columns (the first is also the count of work ops then), and one row (an error
    # naming the sample count is what they ask): four figures, four runtimes.
    return BaselineFit(columns=columns, min_rows=4)


@parametrize_with_checks([cost(), split(), baseline_fit()])
def test_sklearn_estimator_checks(estimator, check) -> None:
    check(estimator)


@pytest.mark.parametrize(
    "estimator",
    [cost(), split("col_0"), baseline_fit(("col_0", "col_1", "col_2"))],
    ids=["CostRegressor", "SplitRegressor", "BaselineFit"],
)
def test_dataframe_column_names_are_recorded_and_checked(estimator) -> None:
    """Fit on a DataFrame (columns ``col_0``, ...): ``feature_names_in_`` holds its names, and predicting on
    other names or another order is refused (not among the checks above in scikit-learn 1.9)."""
    check_dataframe_column_names_consistency(type(estimator).__name__, estimator)


def test_an_array_fits_as_the_dataframe_of_its_values_under_x_names() -> None:
    """Options naming columns work on arrays by the names x0, x1, ...: the same model as on the table."""
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.uniform(0, 1, 60), "b": rng.uniform(0, 1, 60)})
    X["base"] = 2 * X["a"]
    y = X["base"].to_numpy() + 0.3 * X["b"].to_numpy() + rng.normal(0, 0.01, 60)
    named = cost(baseline="base", increasing=("a",)).fit(X, y)
    plain = cost(baseline="x2", increasing=("x0",)).fit(X.to_numpy(), y)
    assert list(named.feature_names_in_) == ["a", "b", "base"] and not hasattr(plain, "feature_names_in_")
    assert named.cv_scores_["lightgbm+base"] == {
        regime: {**score, "seconds": named.cv_scores_["lightgbm+base"][regime]["seconds"]}
        for regime, score in plain.cv_scores_["lightgbm+x2"].items()
    }
    np.testing.assert_array_equal(named.predict(X), plain.predict(X.to_numpy()))
    with pytest.raises(ValueError, match="baseline names a column X does not have: 'base'"):
        cost(baseline="base").fit(X.to_numpy(), y)
