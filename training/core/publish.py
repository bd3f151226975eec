"""Publishing a fitted model version: a complete folder under a temporary name, renamed into place."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
import onnxruntime
import pandas as pd
import sklearn

from service.core.domain import Domain
from service.core.model import CARD, file_sha256
from training.core.models import CostRegressor
from training.core.split_regressor import SplitRegressor

log = logging.getLogger(__name__)


def library_versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
        "lightgbm": lgb.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def new_version() -> str:
    """Sortable UTC timestamp; microseconds keep two publishes in one second apart."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def publish(
    model_dir: Path,
    name: str,
    domain: Domain,
    card: dict[str, Any],
    fitted: Mapping[str, tuple[CostRegressor | SplitRegressor, dict]],
) -> Path:
    """Write a complete version folder under a temporary name, then rename it into place.

    The card's domain, feature version and columns come from the domain's contract, and the whole card is
    checked against the domain's card type before it is written: a card the service would refuse is never
    published (ValueError naming the field). A reader (the service) lists only folders without a leading
    dot that hold a card, so a publish killed at any point leaves either no version or a complete one.
    """
    version = new_version()
    root = model_dir / name
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{version}-{os.getpid()}"
    staging.mkdir()
    try:
        targets: dict[str, Any] = {}
        for target, (model, extra) in fitted.items():
            targets[target] = {**model.card_entry(staging, target), **extra}
        files = {p.name: file_sha256(p) for p in sorted(staging.iterdir())}
        full_card = {
            "name": name,
            "version": version,
            "domain": domain.name,
            "feature_version": domain.feature_version,
            "feature_columns": list(domain.columns),
            **card,
            "targets": targets,
            "files": files,
            "libraries": library_versions(),
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        domain.check_card_fields(full_card)
        with (staging / CARD).open("w") as fh:
            json.dump(full_card, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        final = root / version
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("published %s version %s to %s", name, version, final)
    return final
