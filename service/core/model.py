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
from pathlib import Path
from typing import Any, TypeVar

import joblib
import numpy as np
import pandas as pd

from service.core.cards import Card, parse_card
from service.core.targets import (
    ONNX_LOAD_ERRORS,
    OnnxTrees,
    Prediction,
    Split,
    TargetModel,
    member_of,
)

log = logging.getLogger(__name__)
C = TypeVar("C", bound=Card)

CARD = "card.json"


class ModelLoadError(RuntimeError):
    """A model version cannot be served; the message says which file and why."""


def file_sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


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
