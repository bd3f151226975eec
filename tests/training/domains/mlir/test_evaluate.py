"""``perfcost evaluate mlir``'s metrics document: the noise floor it reports next to the figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.domains.mlir.evaluate import summarize_mlir


def _predictions(n: int) -> pd.DataFrame:
    true = np.linspace(0.05, 2.0, n)
    return pd.DataFrame(
        {
            "target": "runtime_ms",
            "model": "lightgbm",
            "family": ["matmul", "softmax"] * (n // 2),
            "true": true,
            "pred": true * 1.1,
            "low": true * 0.8,
            "high": true * 1.2,
        }
    )


def test_noise_floor_reports_the_spread_within_and_between_launches() -> None:
    frame = pd.DataFrame({"runtime_spread": [0.02, 0.04, 0.06, np.nan], "runtime_launch_spread": [0.1] * 4})
    floor = summarize_mlir(_predictions(4), frame, "d", "random", 8)["noise_floor"]
    assert floor["runtime_spread_median"] == pytest.approx(0.04)
    assert floor["runtime_spread_p90"] == pytest.approx(0.056)
    assert floor["runtime_launch_spread_median"] == pytest.approx(0.1)


def test_noise_floor_of_data_collected_with_one_launch_is_none_not_zero() -> None:
    frame = pd.DataFrame({"runtime_spread": [0.02, 0.04], "runtime_launch_spread": [np.nan, np.nan]})
    floor = summarize_mlir(_predictions(2), frame, "d", "random", 8)["noise_floor"]
    assert floor["runtime_launch_spread_median"] is None and floor["runtime_launch_spread_p90"] is None
    assert floor["runtime_spread_median"] == pytest.approx(0.03)
