"""CPU: a system's specs → SPEC CPU2017 per-benchmark ratios and each suite's score.

The room holds the schemas (:mod:`.schemas`), the card (:mod:`.cards`), the features (:mod:`.features`),
the training data's profile and the out-of-distribution rule (:mod:`.profile`), the runtime
(:mod:`.runtime`) and the benchmark list's route (:mod:`.routes`); :data:`DOMAIN` ties them together.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from service.core.deps import Serving
from service.core.domain import Domain, RequestError
from service.core.model import TabularModel
from service.domains.cpu import features, runtime
from service.domains.cpu.cards import CpuCard
from service.domains.cpu.routes import router
from service.domains.cpu.schemas import CpuInstance, CpuPrediction, CpuPredictRequest, CpuPredictResponse


def check(request: CpuPredictRequest, model: TabularModel, serving: Serving) -> None:
    """The suite, then every instance (before micro-batching, so one bad request fails alone)."""
    try:
        runtime.get_suite(model, request.suite)
    except runtime.UnknownSuiteError as exc:
        raise RequestError("suite", str(exc)) from exc
    try:
        runtime.check_instances(request.instances)
    except runtime.InvalidSpecError as exc:
        raise RequestError(exc.field, str(exc)) from exc


def predict(
    instances: list[CpuInstance], request: CpuPredictRequest, model: TabularModel, serving: Serving
) -> list[dict[str, Any]]:
    return runtime.predict(instances, request.coverage, request.suite, model)


def suite_key(request: CpuPredictRequest) -> tuple[Hashable, ...]:
    return (request.suite,)


def answer(request: CpuPredictRequest, model: TabularModel) -> dict[str, Any]:
    return {"suite": request.suite}


def output_keys(model: TabularModel) -> dict[str, list[str]]:
    """Every benchmark of every suite names an output (a suite's request fills its own, NaN elsewhere)."""
    suites = runtime.benchmarks(model)["suites"]
    return {"benchmarks": list(dict.fromkeys(b for names in suites.values() for b in names))}


DOMAIN = Domain(
    name="cpu",
    feature_version=features.FEATURE_VERSION,
    columns=features.FEATURE_COLUMNS,
    card_type=CpuCard,
    request=CpuPredictRequest,
    instance=CpuInstance,
    prediction=CpuPrediction,
    response=CpuPredictResponse,
    predict=predict,
    check=check,
    batch_key=suite_key,
    answer=answer,
    output_keys=output_keys,
    routes=router,
)
