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
    """A real GEMM model published once per session: GPPerf's tiled kernel (runtime and power on an RTX
    4070) plus a 3,000-row sample of NeuSight's five GPUs, so new devices get calibrated intervals."""
    from dataclasses import replace

    from training.data.gemm import load_gemm
    from training.train import publish_gemm

    root = tmp_path_factory.mktemp("registry")
    settings = Settings(data_mirror=mirror, data_home=root / "cache", model_dir=root / "models")
    neusight = load_gemm("neusight-gemm", settings)
    sample = replace(neusight, frame=neusight.frame.sample(3000, random_state=0).reset_index(drop=True))
    publish_gemm([load_gemm("gpperf-rtx4070-tiled", settings), sample], settings)
    return root / "models"
