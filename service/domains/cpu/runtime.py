"""CPU predictions: validated CPU specs → features → one suite's benchmark models → response rows.

Each benchmark ratio comes from its own target model (``<suite>/<benchmark>`` in the card's
``target_keys``, stored under a file-safe stem). The suite score is the geometric mean of the predicted
ratios, as SPEC defines it: ``exp(mean of the predicted log ratios)``; its interval is the direct
``<suite>/score`` model's conformal half-width (log scale) around that value (see
``training/domains/cpu/train.py``).
A CPU model seen in training gets the "seen" calibration, any other the wider "unseen" one; a vendor,
family or compiler never seen, or a spec outside the training ranges, is still predicted and flagged
out of distribution with the reasons.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core.model import TabularModel
from service.domains.cpu import features, profile
from service.domains.cpu.cards import CpuCard
from service.domains.cpu.schemas import CpuInstance

SCORE = "score"
SCORE_METHOD = "geomean_of_ratios"
_ROW_FIELD = re.compile(r"^row (?P<row>\d+): (?:unknown CPU field\(s\) (?P<unknown>[\w.]+)|(?P<field>\w+) )")


class UnknownSuiteError(LookupError):
    pass


class InvalidSpecError(ValueError):
    """The feature module refused an instance; ``field`` is its path in the request."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Suite:
    name: str
    benchmarks: tuple[str, ...]
    stems: tuple[str, ...]  # target keys of the benchmarks, in the same order
    score_stem: str


def suites(model: TabularModel) -> dict[str, Suite]:
    """The suites a model can serve (each benchmark and its score model loaded), parsed once per version."""
    if "cpu_suites" not in model.cache:
        card = model.typed_card(CpuCard)
        keys = card.target_keys
        parsed: dict[str, Suite] = {}
        for suite, names in card.suites.items():
            score_stem = keys.get(f"{suite}/{SCORE}")
            pairs = [
                (name.split("/", 1)[1], keys[name])
                for name in names
                if name != f"{suite}/{SCORE}" and keys.get(name) in model.targets
            ]
            if score_stem in model.targets and pairs:
                assert score_stem is not None
                parsed[suite] = Suite(
                    suite, tuple(b for b, _ in pairs), tuple(s for _, s in pairs), score_stem
                )
        model.cache["cpu_suites"] = parsed
    found: dict[str, Suite] = model.cache["cpu_suites"]
    return found


def get_suite(model: TabularModel, name: str) -> Suite:
    known = suites(model)
    if name not in known:
        raise UnknownSuiteError(
            f"unknown suite {name!r}; model {model.name} {model.version} serves: {', '.join(known) or 'none'}"
        )
    return known[name]


def _specs(instances: list[CpuInstance]) -> list[dict[str, Any]]:
    return [inst.model_dump(exclude_none=True) for inst in instances]


def _invalid(exc: ValueError) -> InvalidSpecError:
    """The feature module's error ("row 3: cores_per_socket must be ...") as a request field path."""
    match = _ROW_FIELD.match(str(exc))
    if match is None:
        return InvalidSpecError("instances", str(exc))
    name = match.group("unknown") or match.group("field")
    return InvalidSpecError(f"instances.{match.group('row')}.{name}", str(exc))


def check_instances(instances: list[CpuInstance]) -> None:
    """Raise :class:`InvalidSpecError` if the feature module refuses an instance (before micro-batching,
    so one bad request never fails the requests batched with it)."""
    try:
        features.specs_frame(_specs(instances))
    except ValueError as exc:
        raise _invalid(exc) from exc


def _interval(value: float, width: float) -> dict[str, float] | None:
    row = {"value": value, "low": value * float(np.exp(-width)), "high": value * float(np.exp(width))}
    return row if all(np.isfinite(v) for v in row.values()) else None


def predict(
    instances: list[CpuInstance], coverage: float, suite: str, model: TabularModel
) -> list[dict[str, Any]]:
    chosen = get_suite(model, suite)
    try:
        table, seen, ood = profile.request_features(_specs(instances), model.typed_card(CpuCard).profile)
    except ValueError as exc:
        raise _invalid(exc) from exc
    matrix = table.to_numpy(dtype=float)
    centers = np.stack([model.targets[stem].predict_log(matrix) for stem in chosen.stems])
    widths = [model.targets[stem].halfwidths(coverage, seen) for stem in (*chosen.stems, chosen.score_stem)]
    score = np.exp(centers.mean(axis=0))
    values = np.exp(centers)

    out = []
    for i in range(len(instances)):
        unavailable: dict[str, str] = {}
        benchmarks: dict[str, dict[str, float] | None] = {}
        for j, bench in enumerate(chosen.benchmarks):
            benchmarks[bench] = _interval(float(values[j, i]), float(widths[j][i]))
            if benchmarks[bench] is None:
                unavailable[bench] = _why_missing(float(widths[j][i]))
        row_score = _interval(float(score[i]), float(widths[-1][i]))
        if row_score is None:
            unavailable[SCORE] = _why_missing(float(widths[-1][i]))
        out.append(
            {
                "benchmarks": benchmarks,
                "score": row_score,
                "unavailable": unavailable,
                "seen_in_training": bool(seen[i]),
                "out_of_distribution": bool(ood[i]),
                "ood_reasons": ood[i],
            }
        )
    return out


def _why_missing(width: float) -> str:
    if not np.isfinite(width):
        return (
            "the model has no calibration for CPU models outside its training data, "
            "so no honest interval can be given"
        )
    return "the prediction is not a finite number for this input"


def benchmarks(model: TabularModel) -> dict[str, Any]:
    return {
        "model": model.name,
        "version": model.version,
        "suites": {name: list(s.benchmarks) for name, s in suites(model).items()},
        "score_method": str(model.typed_card(CpuCard).score.get("method", SCORE_METHOD)),
    }
