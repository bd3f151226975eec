"""The GEMM evaluation's random split: repeat measurements of one GEMM never straddle train and test."""

from __future__ import annotations

import numpy as np
import pandas as pd

from service.domains.gemm.features import CONFIG_COLUMNS
from training.domains.gemm.evaluate import random_split


def test_repeat_campaigns_of_one_gemm_stay_on_one_side() -> None:
    rng = np.random.default_rng(0)
    shapes = pd.DataFrame({"m": rng.integers(1, 4096, 500), "n": 4096, "k": 4096})
    frame = pd.concat(
        [
            shapes.assign(framework_version=v, kernel=f"kernel-{v}", runtime_ms=1.0)
            for v in ("1.0", "1.1", "1.2")
        ],
        ignore_index=True,
    )
    for col in CONFIG_COLUMNS:
        if col not in frame:
            frame[col] = None  # unset fields (NaN keys) must still group
    frame = frame.assign(device="NVIDIA H100 80GB HBM3", dtype="bfloat16", framework="trtllm")
    train, test = random_split(frame)
    assert 0.15 < len(test) / len(frame) < 0.25
    sides = pd.concat([train.assign(side="train"), test.assign(side="test")]).groupby("m")["side"].nunique()
    assert (sides == 1).all()
