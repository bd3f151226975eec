"""Target models at serving time: one target's trees, its calibrated intervals and the prediction rule.

:func:`served_log` is the rule by which a target's prediction is made from its trees' output (relative to
a baseline column, plus a calibrated device's correction, never below a floor column); training scores its
candidates with the same function, so what is evaluated is what is served.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

# Calibration grids hold |log residual| quantiles at these levels; coverage is interpolated between them.
QUANTILE_LEVELS = np.round(np.linspace(0.0, 1.0, 201), 3)
# Coverages whose interval half-widths a target keeps at a time.
WIDTH_CACHE_SIZE = 64
# Name of the ONNX export's input, and the metadata key listing the feature columns it was fit on.
ONNX_INPUT = "features"
ONNX_FEATURE_NAMES = "feature_names"
# What onnxruntime raises for a file it cannot use (its exceptions derive from Exception directly).
ONNX_LOAD_ERRORS = (
    ort.capi.onnxruntime_pybind11_state.Fail,
    ort.capi.onnxruntime_pybind11_state.InvalidArgument,
    ort.capi.onnxruntime_pybind11_state.InvalidGraph,
    ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
    ort.capi.onnxruntime_pybind11_state.NotImplemented,
)


def served_log(
    own: np.ndarray,
    baseline: np.ndarray | None = None,
    floor: np.ndarray | None = None,
    correction: np.ndarray | None = None,
) -> np.ndarray:
    """The prediction rule, on the log scale: the trees' own output on top of the baseline (a log-scale
    figure the trees learned relative to, if any), plus a calibrated device's correction (if any), never
    below the floor (a log time no run can beat, e.g. the roofline, if any)."""
    out = own if baseline is None else own + baseline
    if correction is not None:
        out = out + correction
    return out if floor is None else np.maximum(out, floor)


def halfwidth(grid: list[float] | np.ndarray, coverage: float) -> float:
    """Split-conformal half-width on the log scale for a coverage, from a calibration grid."""
    return float(np.interp(coverage, QUANTILE_LEVELS, np.asarray(grid, dtype=float)))


def calibration_grid(abs_residuals: np.ndarray) -> list[float]:
    """Quantile grid of out-of-fold |log residuals|, with the finite-sample (n+1)/n correction."""
    r = np.sort(np.abs(abs_residuals[np.isfinite(abs_residuals)]))
    n = len(r)
    if n == 0:
        raise ValueError("no residuals to calibrate on")
    levels = np.minimum(np.ceil((n + 1) * QUANTILE_LEVELS) / n, 1.0)
    return [round(float(v), 6) for v in np.quantile(r, levels, method="higher")]


def forest_predict(forest: Any, features: np.ndarray) -> np.ndarray:
    """Mean of a fitted random forest's trees, summed in a fixed order.

    The forest's own predict dispatches every tree through joblib and re-validates the input: ~70 ms for
    one row here, and with several threads the summation order (so the last bits) varies. Summing the
    trees' compiled predictors over the float32 matrix sklearn itself would build takes ~1 ms and gives
    the same value every time; training and serving both call this.
    """
    matrix = np.ascontiguousarray(features, dtype=np.float32)
    total = np.zeros(len(matrix))
    for tree in forest.estimators_:
        total += tree.tree_.predict(matrix)[:, 0]
    return total / len(forest.estimators_)


class OnnxTrees:
    """A tree ensemble exported to ONNX (see ``training.core.onnx_export``), run by onnxruntime."""

    def __init__(self, path: Path) -> None:
        options = ort.SessionOptions()
        # One thread: a second one sped the 10,000-instance batch up (0.77 -> 0.61 s end to end) but competed
        # with the event loop under concurrent small requests (16-client p50 8.0 -> 11-12 ms, this machine).
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = self.session.get_modelmeta().custom_metadata_map.get(ONNX_FEATURE_NAMES, "[]")
        self.feature_names: list[str] = json.loads(names)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        features = np.ascontiguousarray(matrix, dtype=np.float32)
        return np.asarray(self.session.run(None, {ONNX_INPUT: features})[0], dtype=float)


def member_of(values: list[str], known: Collection[str]) -> np.ndarray:
    """Per value, whether it is in ``known``: a set lookup, where ``np.isin`` on object arrays sorts them
    (~0.1 ms per call for a request's few rows, several calls per request)."""
    lookup = set(known)
    return np.fromiter((v in lookup for v in values), dtype=bool, count=len(values))


@dataclass
class Prediction:
    """Per-row value and interval on the original scale."""

    value: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass(frozen=True)
class Split:
    """A card's "below" entry, loaded: ``model`` predicts the rows whose feature ``column`` (an index) is
    below ``value``, those from ``capped_from`` on never above the main model's prediction at the split,
    which ``at_split`` (the domain's feature module) computes."""

    model: TargetModel
    column: int
    value: float
    capped_from: float
    at_split: Callable[[np.ndarray, float], np.ndarray]


def split_cap(
    part: np.ndarray,
    column: int,
    value: float,
    capped_from: float,
    at_split: Callable[[np.ndarray, float], np.ndarray],
    upper_log: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Per feature row below a split: the upper model's log prediction for it at the split (``column``
    set to ``value``), or +inf where uncapped (``column`` below ``capped_from``). The rule of a split
    model, here alone: training calibrates the capped predictions it serves with this too."""
    capped = part[:, column] >= capped_from
    cap = np.full(len(part), np.inf)
    if capped.any():
        cap[capped] = upper_log(at_split(part[capped], value))
    return cap


def _rows(devices: list[str] | None, mask: np.ndarray) -> list[str] | None:
    """The device names of the rows in ``mask`` (None stays None)."""
    return None if devices is None else [d for d, keep in zip(devices, mask, strict=True) if keep]


@dataclass
class TargetModel:
    name: str
    estimator: str
    predictor: Any
    calibration: dict[str, list[float]]
    devices: list[str]
    # Index of the feature column holding a log-scale baseline the predictor's output is relative to.
    baseline: int | None = None
    # Index of a feature column holding a log-scale time no run can beat (e.g. the roofline): predictions
    # never fall below it.
    floor: int | None = None
    # Indices of the feature columns the predictor reads, in its order (None: all of them).
    inputs: np.ndarray | None = None
    # Per calibrated device (few training rows, see training.core.corrections.fit_correction): a small tree
    # model of the log error, added to the prediction, and the indices of the feature columns it reads.
    corrections: dict[str, tuple[OnnxTrees, np.ndarray]] = field(default_factory=dict)
    # Unset: this model predicts every row.
    split: Split | None = None
    # Half-widths (seen device, unseen device, beyond the sizes trained on, calibrated device) per requested
    # coverage: requests mostly repeat one coverage, and interpolating the grids costs more than the rest of
    # a one-row interval.
    _widths: dict[float, tuple[float, float, float, float]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def _own_log(self, matrix: np.ndarray, devices: list[str] | None = None) -> np.ndarray:
        seen = matrix if self.inputs is None else matrix[:, self.inputs]
        if isinstance(self.predictor, OnnxTrees):
            raw = self.predictor.predict(seen)
        else:
            raw = forest_predict(self.predictor, seen)
        own = np.asarray(raw, dtype=float).reshape(len(matrix))
        correction = None
        if self.corrections and devices is not None:
            for device in set(devices).intersection(self.corrections):
                head, columns = self.corrections[device]
                rows = np.fromiter((d == device for d in devices), dtype=bool, count=len(devices))
                correction = np.zeros(len(matrix)) if correction is None else correction
                correction[rows] = head.predict(matrix[rows][:, columns]).reshape(int(rows.sum()))
        return served_log(
            own,
            None if self.baseline is None else matrix[:, self.baseline],
            None if self.floor is None else matrix[:, self.floor],
            correction,
        )

    def predict_log(self, matrix: np.ndarray, devices: list[str] | None = None) -> np.ndarray:
        """Log-scale prediction from the feature matrix (columns in the card's order, checked at load);
        ``devices`` (per row) picks the calibrated devices' corrections."""
        split = self.split
        if split is None:
            return self._own_log(matrix, devices)
        below = matrix[:, split.column] < split.value
        if not below.any():
            return self._own_log(matrix, devices)
        out = np.empty(len(matrix))
        if not below.all():
            out[~below] = self._own_log(matrix[~below], _rows(devices, ~below))
        part, names = matrix[below], _rows(devices, below)
        capped = _rows(names, part[:, split.column] >= split.capped_from)

        def upper_log(raised: np.ndarray) -> np.ndarray:
            return self._own_log(raised, capped)

        cap = split_cap(part, split.column, split.value, split.capped_from, split.at_split, upper_log)
        out[below] = np.minimum(split.model._own_log(part, names), cap)
        return out

    def predict(
        self,
        matrix: np.ndarray,
        coverage: float,
        seen: np.ndarray,
        only_seen: bool = False,
        seen_below: np.ndarray | None = None,
        beyond: np.ndarray | None = None,
        devices: list[str] | None = None,
    ) -> Prediction:
        """Value and conformal interval; ``seen`` marks rows whose device this target was trained on,
        ``seen_below`` those the model below the split was trained on (default: ``seen``), and ``beyond``
        rows larger than anything trained on their device (default: none); ``devices`` names each row's
        device, for the calibrated devices' corrections and intervals. With ``only_seen`` the other rows
        are not predicted at all (NaN)."""
        if only_seen and not seen.all():
            center = np.full(len(matrix), np.nan)
            if seen.any():
                center[seen] = self.predict_log(matrix[seen], _rows(devices, seen))
        else:
            center = self.predict_log(matrix, devices)
        width = self.halfwidths(coverage, seen, beyond, self.calibrated(devices))
        if self.split is not None:
            below = matrix[:, self.split.column] < self.split.value
            seen_part = (seen if seen_below is None else seen_below)[below]
            beyond_part = None if beyond is None else beyond[below]
            width[below] = self.split.model.halfwidths(
                coverage, seen_part, beyond_part, self.split.model.calibrated(_rows(devices, below))
            )
        low = center - width
        if self.floor is not None:
            low = np.maximum(low, matrix[:, self.floor])
        return Prediction(np.exp(center), np.exp(low), np.exp(center + width))

    def calibrated(self, devices: list[str] | None) -> np.ndarray | None:
        """Per row, whether its device is a calibrated one (None: no row is)."""
        if not self.corrections or devices is None:
            return None
        return member_of(devices, self.corrections)

    def halfwidths(
        self,
        coverage: float,
        seen: np.ndarray,
        beyond: np.ndarray | None = None,
        calibrated: np.ndarray | None = None,
    ) -> np.ndarray:
        """Log-scale half-width per row: the "seen" calibration for rows like the training data, the
        "unseen" one (held-out devices, families or CPU models) for the others, on a seen device the
        "extrapolate" one (fit on its smaller rows, scored on its largest) for rows in ``beyond``, and the
        "calibrated" one (a held-out device corrected by a few of its rows) for rows in ``calibrated``.
        Outside the training distribution never narrower than inside."""
        if coverage not in self._widths:
            inside = halfwidth(self.calibration["seen"], coverage)
            larger = (
                max(halfwidth(self.calibration["extrapolate"], coverage), inside)
                if "extrapolate" in self.calibration
                else inside
            )
            # Without held-out-group residuals there is no honest interval for a new group: NaN, which the
            # domain reports as unavailable. With them, never narrower outside the training distribution
            # than inside, whatever the calibration sample.
            outside = (
                max(halfwidth(self.calibration["unseen"], coverage), inside)
                if "unseen" in self.calibration
                else np.nan
            )
            corrected = (
                max(halfwidth(self.calibration["calibrated"], coverage), inside)
                if "calibrated" in self.calibration
                else inside
            )
            if len(self._widths) >= WIDTH_CACHE_SIZE:
                self._widths.clear()  # coverage comes from requests: bound what they can make us keep
            self._widths[coverage] = (inside, outside, larger, corrected)
        inside, outside, larger, corrected = self._widths[coverage]
        within = inside if beyond is None else np.where(beyond, larger, inside)
        if calibrated is not None:
            within = np.where(calibrated, np.maximum(corrected, within), within)
        return np.where(seen, within, outside)
