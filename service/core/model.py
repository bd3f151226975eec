"""Model runtime: a published model version on disk → ``load()`` → ``predict()``.

A version folder holds ``card.json`` and the files of each target. The card is written at training time
and records the sha256 of every model file; :meth:`TabularModel.load` refuses a version whose files are
missing or differ, whose feature version or columns differ from the running feature module, or whose
card lists a file outside its folder. A LightGBM model is stored in LightGBM's text format and as an ONNX
tree ensemble, which the service runs with onnxruntime; a random forest is a joblib pickle and is
unpickled only after its sha256 matched the card.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import joblib
import numpy as np
import onnxruntime as ort
import pandas as pd

from service.core.cards import Card, parse_card

log = logging.getLogger(__name__)
C = TypeVar("C", bound=Card)

CARD = "card.json"
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


class ModelLoadError(RuntimeError):
    """A model version cannot be served; the message says which file and why."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    """A tree ensemble exported to ONNX (see ``training.models.lightgbm_onnx``), run by onnxruntime."""

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
    # Per calibrated device (few training rows, see training.models.fit_correction): a small tree model of
    # the log error, added to the prediction, and the indices of the feature columns it reads.
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
        out = np.asarray(raw, dtype=float).reshape(len(matrix))
        if self.baseline is not None:
            out = out + matrix[:, self.baseline]
        if self.corrections and devices is not None:
            for device in set(devices).intersection(self.corrections):
                head, columns = self.corrections[device]
                rows = np.fromiter((d == device for d in devices), dtype=bool, count=len(devices))
                out[rows] += head.predict(matrix[rows][:, columns]).reshape(int(rows.sum()))
        return np.maximum(out, matrix[:, self.floor]) if self.floor is not None else out

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


class TabularModel:
    """One published version of one model (MLServer-style: construct, ``load()``, then ``predict()``)."""

    def __init__(
        self,
        path: Path,
        feature_version: str,
        feature_columns: tuple[str, ...],
        at_split: Callable[[np.ndarray, float], np.ndarray] | None = None,
    ) -> None:
        self.path = path
        self.feature_version = feature_version
        self.feature_columns = feature_columns
        # The feature module's map of feature rows to a split column's value, for split targets.
        self.at_split = at_split
        # The card as written (what GET /v1/models shows) and as typed (what the code reads).
        self.card: dict[str, Any] = {}
        self.meta: Card | None = None
        self.targets: dict[str, TargetModel] = {}
        # Data a domain derives from the card once per loaded version (e.g. parsed device specs).
        self.cache: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return self.meta.name if self.meta is not None else self.path.parent.name

    @property
    def version(self) -> str:
        return self.meta.version if self.meta is not None else self.path.name

    def typed_card(self, card_type: type[C]) -> C:
        """The card as a domain's type (see :mod:`service.core.cards`), parsed once per loaded version."""
        key = f"card:{card_type.__name__}"
        if key not in self.cache:
            self.cache[key] = parse_card(self.card, card_type)
        typed: C = self.cache[key]
        return typed

    def _verified_files(self, meta: Card) -> dict[str, Path]:
        """Every file the card lists, each checked against its sha256 (also those serving does not read)."""
        return {filename: self._verified(filename, sha) for filename, sha in meta.files.items()}

    def _verified(self, filename: str, expected: str) -> Path:
        path = (self.path / filename).resolve()
        if path.parent != self.path.resolve():
            raise ModelLoadError(f"{self.path}: {filename} points outside the version folder")
        if not path.is_file():
            raise ModelLoadError(f"{self.path}: model file {filename} is missing")
        actual = file_sha256(path)
        if actual != expected:
            raise ModelLoadError(
                f"{self.path}: {filename} sha256 {actual[:12]}… differs from the card's "
                f"{expected[:12]}…; "
                "the file was changed after training and is refused"
            )
        return path

    def _target(self, name: str, spec: dict[str, Any], paths: dict[str, Path]) -> TargetModel:
        """One target's predictor from its card entry, its files already verified."""
        missing = [key for key in ("estimator", "calibration") if key not in spec]
        if missing:
            raise ModelLoadError(f"{self.path}: {name} lacks {', '.join(missing)} in {CARD}")
        if spec["estimator"] == "lightgbm":
            if "onnx" not in spec:
                raise ModelLoadError(
                    f"{self.path}: {name} has no ONNX export, which this service runs; retrain the model"
                )
            filename = spec["onnx"]
        elif spec["estimator"] == "random_forest":
            filename = spec["file"]
        else:
            raise ModelLoadError(f"{self.path}: unknown estimator {spec['estimator']!r} for {name}")
        if filename not in paths:
            raise ModelLoadError(f"{self.path}: {filename} is not listed with a sha256 in {CARD}")
        path = paths[filename]
        try:
            predictor: Any = OnnxTrees(path) if spec["estimator"] == "lightgbm" else joblib.load(path)
        except (*ONNX_LOAD_ERRORS, OSError, EOFError, ValueError) as exc:
            raise ModelLoadError(f"{self.path}: {filename} cannot be loaded: {exc}") from exc
        names = (
            predictor.feature_names
            if isinstance(predictor, OnnxTrees)
            else list(getattr(predictor, "feature_names_in_", []))
        )
        indices = self._input_indices(filename, list(names))
        inputs = None if list(names) == list(self.feature_columns) else indices
        baseline, floor = spec.get("baseline"), spec.get("floor")
        for role, column in (("baseline", baseline), ("floor", floor)):
            if column is not None and column not in self.feature_columns:
                raise ModelLoadError(f"{self.path}: {name}'s {role} {column!r} is not a feature column")
        return TargetModel(
            name=name,
            estimator=spec["estimator"],
            predictor=predictor,
            calibration=spec["calibration"],
            devices=list(spec.get("devices", [])),
            baseline=self.feature_columns.index(baseline) if baseline is not None else None,
            floor=self.feature_columns.index(floor) if floor is not None else None,
            inputs=inputs,
            corrections=self._corrections(name, spec, paths),
        )

    def _corrections(
        self, name: str, spec: dict[str, Any], paths: dict[str, Path]
    ) -> dict[str, tuple[OnnxTrees, np.ndarray]]:
        """A target's per-device corrections: each an ONNX file the card lists with its sha256, reading
        feature columns by name."""
        out = {}
        for device, entry in (spec.get("corrections") or {}).items():
            filename = entry.get("onnx") if isinstance(entry, dict) else None
            if filename not in paths:
                raise ModelLoadError(
                    f"{self.path}: {name}'s correction for {device!r} names no file listed in {CARD}"
                )
            try:
                head = OnnxTrees(paths[filename])
            except ONNX_LOAD_ERRORS as exc:
                raise ModelLoadError(f"{self.path}: {filename} cannot be loaded: {exc}") from exc
            out[device] = (head, self._input_indices(filename, head.feature_names))
        return out

    def _input_indices(self, filename: str, names: list[str]) -> np.ndarray:
        """The indices of the feature columns a tree file reads. The trees see the feature columns, or a
        subset of them (a domain keeping absolute figures out of its trees), by name: anything else was fit
        on features this service does not compute."""
        unknown = [c for c in names if c not in self.feature_columns]
        if not names or unknown or len(set(names)) != len(names):
            raise ModelLoadError(f"{self.path}: {filename} was fit on other feature columns; retrain")
        return np.array([self.feature_columns.index(c) for c in names], dtype=np.intp)

    def _split_figure(self, name: str, below: dict[str, Any], key: str) -> float:
        value = below.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise ModelLoadError(f"{self.path}: {name}'s split {key} must be a finite number, got {value!r}")
        return float(value)

    def load(self) -> TabularModel:
        card_path = self.path / CARD
        try:
            raw = json.loads(card_path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{card_path}: cannot read the model card: {exc}") from exc
        feature_version = raw.get("feature_version") if isinstance(raw, dict) else None
        if feature_version != self.feature_version:
            raise ModelLoadError(
                f"{self.path}: trained with features {feature_version!r}, this service computes "
                f"{self.feature_version!r}; retrain the model"
            )
        try:
            meta = parse_card(raw, Card)
        except ValueError as exc:
            raise ModelLoadError(f"{card_path}: {exc}") from exc
        if meta.feature_columns != self.feature_columns:
            raise ModelLoadError(
                f"{self.path}: the card's feature columns differ from the feature module's; retrain"
            )
        paths = self._verified_files(meta)
        targets = {}
        for name, spec in meta.targets.items():
            target = self._target(name, spec, paths)
            if "below" in spec:
                below = spec["below"]
                if self.at_split is None:
                    raise ModelLoadError(f"{self.path}: {name} is split, which this domain cannot serve")
                if below.get("column") not in self.feature_columns:
                    raise ModelLoadError(
                        f"{self.path}: {name} is split on {below.get('column')!r}, not a feature column"
                    )
                target.split = Split(
                    model=self._target(f"{name} below the split", below, paths),
                    column=self.feature_columns.index(below["column"]),
                    value=self._split_figure(name, below, "value"),
                    capped_from=(
                        -np.inf
                        if below.get("capped_from") is None
                        else self._split_figure(name, below, "capped_from")
                    ),
                    at_split=self.at_split,
                )
            targets[name] = target
        if not targets:
            raise ModelLoadError(f"{self.path}: the card lists no targets")
        self.card, self.meta, self.targets = raw, meta, targets
        return self

    def predict(
        self,
        features: pd.DataFrame | np.ndarray,
        coverage: float,
        devices: list[str],
        only_seen: Collection[str] = (),
        beyond: np.ndarray | None = None,
    ) -> dict[str, tuple[Prediction, np.ndarray]]:
        """Every target's prediction, plus per row whether that target was trained on the row's device.

        ``features`` is a table with the feature columns, or a matrix whose columns are already in the
        card's order (the feature module's ``FEATURE_COLUMNS``, which loading checked). Targets named in
        ``only_seen`` are predicted only on rows of their training devices (NaN elsewhere), for domains
        that never report them on other devices. ``beyond`` marks rows larger than anything trained on
        their device, which get the extrapolation intervals where a target has them.
        """
        if isinstance(features, pd.DataFrame):
            matrix = features.loc[:, list(self.feature_columns)].to_numpy(dtype=float)
        else:
            matrix = np.asarray(features, dtype=float)
        out = {}
        for name, target in self.targets.items():
            seen = member_of(devices, target.devices)
            seen_below = member_of(devices, target.split.model.devices) if target.split is not None else None
            prediction = target.predict(
                matrix,
                coverage,
                seen,
                only_seen=name in only_seen,
                seen_below=seen_below,
                beyond=beyond,
                devices=devices,
            )
            out[name] = (prediction, seen)
        return out


def list_versions(model_dir: Path, name: str) -> list[Path]:
    """Published version folders of a model, oldest first (temporary and hidden folders excluded)."""
    root = model_dir / name
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / CARD).is_file()
    )
