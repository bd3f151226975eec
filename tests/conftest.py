"""Shared fixtures. Public data comes through the registry from PERFCOST_DATA_MIRROR (CI sets it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.settings import Settings

MIRROR = Path(
    os.environ.get("PERFCOST_DATA_MIRROR", Path(__file__).resolve().parents[2] / "shared" / "datasets")
)


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not (MIRROR / "manifest.json").is_file():
        pytest.fail(
            f"dataset mirror {MIRROR} not found: set PERFCOST_DATA_MIRROR to the shared datasets directory"
        )
    return MIRROR


@pytest.fixture
def settings(tmp_path: Path, mirror: Path) -> Settings:
    return Settings(
        data_mirror=mirror,
        data_home=tmp_path / "cache",
        model_dir=tmp_path / "models",
        report_dir=tmp_path / "reports",
    )


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory: pytest.TempPathFactory, mirror: Path) -> Path:
    """A real GEMM model published once per session from the GPPerf tiled-kernel data (runtime + power)."""
    from training.train import train_gemm_model

    root = tmp_path_factory.mktemp("registry")
    settings = Settings(data_mirror=mirror, data_home=root / "cache", model_dir=root / "models")
    train_gemm_model(["gpperf-rtx4070-tiled"], settings)
    return root / "models"
