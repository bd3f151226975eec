"""MLIR predictions: program texts → checks → features → model targets → response rows.

Every target is predicted from the text alone. Count targets were learned as ``log(value + offset)``
(the card records the offset) and are mapped back here, never below 0 nor above the target's ceiling
where the card records one (the measured CPU's vector register count; a utilization of 1). A program
flagged out of distribution (:func:`service.domains.mlir.profile.ood_reasons`: op names or dialects
training never saw, or a size outside the training range) gets the wider "unseen" conformal interval
(calibrated on held-out program families).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from service.core.model import TabularModel
from service.domains.mlir import features
from service.domains.mlir.cards import MlirCard
from service.domains.mlir.profile import ood_reasons
from service.domains.mlir.schemas import MlirInstance

TARGETS = ("runtime_ms", "instructions", "vector_registers", "spills", "utilization")
OOD_DEVICE = "<out-of-distribution program>"


class ProgramError(ValueError):
    """One instance cannot be predicted; ``status`` is the HTTP status to answer with."""

    def __init__(self, index: int, status: int, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.status = status


def check_instances(instances: list[MlirInstance], max_bytes: int) -> None:
    """Size first (413), then form (422): the first failing instance raises :class:`ProgramError`."""
    for i, inst in enumerate(instances):
        size = len(inst.mlir.encode("utf-8"))
        if size > max_bytes:
            raise ProgramError(
                i,
                413,
                f"the program is {size} bytes, more than the limit of {max_bytes} bytes "
                "(PERFCOST_MAX_PROGRAM_BYTES)",
            )
    for i, inst in enumerate(instances):
        try:
            features.check_mlir(inst.mlir)
        except features.MlirTextError as exc:
            raise ProgramError(i, 422, f"not MLIR: {exc}") from exc


def target_scale(values: np.ndarray, offset: float, ceiling: float = math.inf) -> np.ndarray:
    """Model outputs (``exp`` of the log prediction) on the target's scale: the offset removed, within
    [0, ceiling]. Training's evaluation maps its predictions with this too, so it scores what is served."""
    return np.clip(values - offset, 0.0, ceiling)


def check_card(card: dict[str, Any]) -> None:
    """What the MLIR domain reads from a card beyond its type: the runtime baseline and each target's
    ceiling; :class:`ValueError` naming the field when one is unusable (the registry refuses the version)."""
    features.RuntimeBaseline.from_card(card)
    for target, spec in card.get("targets", {}).items():
        if "ceiling" in spec:
            features.positive_figure(spec["ceiling"], f"targets.{target}.ceiling")


def _summary_json(summary: features.Summary, seen_ops: set[str]) -> dict[str, Any]:
    v = summary.values
    return {
        "ops": dict(summary.ops.most_common()),
        "dialects": dict(summary.dialects.most_common()),
        "unknown_ops": sorted(op for op in summary.ops if seen_ops and op not in seen_ops),
        "estimated_flops": math.exp(v["log_flops"]) if v["log_flops"] else 0.0,
        "estimated_bytes": math.exp(v["log_bytes"]) if v["log_bytes"] else 0.0,
        "tensor_types": int(v["tensor_types"]),
        "max_depth": int(v["max_depth"]),
        "constants_stripped": int(v["blobs"]),
    }


def device(model: TabularModel) -> str:
    """The CPU the model's programs were measured on."""
    return model.typed_card(MlirCard).device


def predict(instances: list[MlirInstance], coverage: float, model: TabularModel) -> list[dict[str, Any]]:
    """Response rows for checked instances (see :func:`check_instances`)."""
    summaries = [features.summarize(inst.mlir) for inst in instances]
    table = features.features_from_summaries(summaries, features.RuntimeBaseline.from_card(model.card))
    card = model.typed_card(MlirCard)
    profile = card.profile
    seen_ops = set(profile.get("ops", []))
    ood = [ood_reasons(s, profile) for s in summaries]
    device = card.device
    devices = [OOD_DEVICE if reasons else device for reasons in ood]
    results = model.predict(table, coverage, devices)
    specs = card.targets
    # Per target: whether each row's three figures are finite, and the figures on the target's scale.
    scaled: dict[str, tuple[np.ndarray, list[tuple[float, float, float]]]] = {}
    for target, (pred, _) in results.items():
        spec = specs.get(target, {})
        offset, ceiling = float(spec.get("offset", 0.0)), float(spec.get("ceiling", math.inf))
        raw = (pred.value, pred.low, pred.high)
        finite = np.isfinite(raw[0]) & np.isfinite(raw[1]) & np.isfinite(raw[2])
        columns = [target_scale(a, offset, ceiling).tolist() for a in raw]
        scaled[target] = (finite, list(zip(*columns, strict=True)))
    rows = []
    for i, summary in enumerate(summaries):
        row: dict[str, Any] = {"unavailable": {}}
        for target in TARGETS:
            if target not in scaled:
                row[target] = None
                row["unavailable"][target] = f"model {model.name} {model.version} has no {target} model"
                continue
            finite, figures = scaled[target]
            if not finite[i]:
                row[target] = None
                row["unavailable"][target] = "the prediction is not a finite number for this program"
                continue
            value, low, high = figures[i]
            row[target] = {"value": value, "low": low, "high": high}
        row["out_of_distribution"] = bool(ood[i])
        row["ood_reasons"] = ood[i]
        row["summary"] = _summary_json(summary, seen_ops)
        rows.append(row)
    return rows
