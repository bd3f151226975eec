"""MLIR: a program's text → runtime, instructions, vector registers, spills and thread utilization.

The room holds the schemas (:mod:`.schemas`), the card (:mod:`.cards`), the text scanner and features
(:mod:`.text`, :mod:`.summary`, :mod:`.cost`, :mod:`.features`), the training programs' profile and the
out-of-distribution rule (:mod:`.profile`) and the runtime (:mod:`.runtime`); :data:`DOMAIN` ties them
together.
"""

from __future__ import annotations

from typing import Any

from service.core.deps import Serving
from service.core.domain import Domain, RequestError
from service.core.model import TabularModel
from service.domains.mlir import features, runtime
from service.domains.mlir.cards import MlirCard
from service.domains.mlir.schemas import MlirInstance, MlirPrediction, MlirPredictRequest, MlirPredictResponse

# Scanning text costs ~1 ms per 10 KB; beyond this many bytes a request leaves the event loop.
THREADPOOL_BYTES = 256 * 1024


def precheck(request: MlirPredictRequest, serving: Serving) -> None:
    """Size first (413), then form (422), before any model is looked up."""
    try:
        runtime.check_instances(request.instances, serving.settings.max_program_bytes)
    except runtime.ProgramError as exc:
        raise RequestError(f"instances.{exc.index}.mlir", str(exc), exc.status) from exc


def predict(
    instances: list[MlirInstance], request: MlirPredictRequest, model: TabularModel, serving: Serving
) -> list[dict[str, Any]]:
    return runtime.predict(instances, request.coverage, model)


def large(request: MlirPredictRequest) -> bool:
    return sum(len(inst.mlir) for inst in request.instances) > THREADPOOL_BYTES


def answer(request: MlirPredictRequest, model: TabularModel) -> dict[str, Any]:
    return {"device": runtime.device(model)}


DOMAIN = Domain(
    name="mlir",
    feature_version=features.FEATURE_VERSION,
    columns=features.FEATURE_COLUMNS,
    card_type=MlirCard,
    request=MlirPredictRequest,
    instance=MlirInstance,
    prediction=MlirPrediction,
    response=MlirPredictResponse,
    predict=predict,
    targets=runtime.TARGETS,
    check_card=runtime.check_card,
    precheck=precheck,
    # Text is scanned per program: nothing to share with other requests.
    batch_key=None,
    offload=large,
    answer=answer,
)
