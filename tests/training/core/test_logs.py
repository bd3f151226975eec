"""Log lines say what they are about: CV labels fit every domain's groups, dataset load reports are not
logged as GEMM data, and CI's virtualenv is made afresh."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.core.models import CostRegressor
from training.domains.mlir.data import load_mlir

ROOT = Path(__file__).resolve().parents[3]


def test_cv_log_lines_name_held_out_groups_not_devices(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.uniform(0, 1, 90), "b": rng.uniform(0, 1, 90)})
    y = X["a"].to_numpy() * 2 + rng.normal(0, 0.01, 90)
    families = np.repeat(["conv", "matmul", "softmax"], 30)
    with caplog.at_level(logging.INFO, logger="training.core.models"):
        CostRegressor(candidates=("random_forest",), select_by="unseen", n_jobs=1).fit(X, y, families)
    messages = [r.getMessage() for r in caplog.records]
    assert any("held-out-group CV" in m for m in messages), messages
    assert not any("device" in m for m in messages), messages


def test_an_mlir_load_report_is_not_logged_as_gemm_data(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        load_mlir(ROOT / "datasets" / "mlir-cpu-local").report.log()
    loggers = {r.name for r in caplog.records if "mlir-cpu-local" in r.getMessage()}
    assert loggers and not any("gemm" in name for name in loggers), loggers


def test_ci_makes_its_virtualenv_afresh() -> None:
    assert "python3 -m venv --clear .venv" in (ROOT / ".ci" / "run").read_text()
