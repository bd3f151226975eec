"""GEMM: sizes, batch, dtype, layout, kernel and the device's specs → runtime, power, energy, utilization
and cost; a search ranks devices and configurations for a workload.

The room holds the request and response schemas (:mod:`.schemas`), the card (:mod:`.cards`), the
features and their physics (:mod:`.features`, :mod:`.physics`, :mod:`.dtypes`), the training data's
profile and the out-of-distribution rule (:mod:`.profile`), the runtime (:mod:`.runtime`), the search
(:mod:`.search`) and its route (:mod:`.routes`); :data:`DOMAIN` ties them into the contract.
"""

from __future__ import annotations

from typing import Any

from service.core.deps import Serving
from service.core.domain import Domain, RequestError
from service.core.model import TabularModel
from service.domains.gemm import features, runtime
from service.domains.gemm.cards import GemmCard
from service.domains.gemm.routes import router
from service.domains.gemm.schemas import GemmInstance, GemmPrediction, GemmPredictRequest, GemmPredictResponse


def check(request: GemmPredictRequest, model: TabularModel, serving: Serving) -> None:
    """Devices are resolved per request first, so an unknown one fails only its own request."""
    try:
        runtime.resolve_devices(request.instances, serving.catalog, runtime.model_devices(model))
    except runtime.UnknownDeviceError as exc:
        raise RequestError(f"instances.{exc.index}.device", str(exc), 404) from exc


def predict(
    instances: list[GemmInstance], request: GemmPredictRequest, model: TabularModel, serving: Serving
) -> list[dict[str, Any]]:
    return runtime.predict(instances, request.coverage, model, serving.catalog)


DOMAIN = Domain(
    name="gemm",
    feature_version=features.FEATURE_VERSION,
    columns=features.FEATURE_COLUMNS,
    card_type=GemmCard,
    request=GemmPredictRequest,
    instance=GemmInstance,
    prediction=GemmPrediction,
    response=GemmPredictResponse,
    predict=predict,
    targets=runtime.TARGETS,
    at_split=features.with_k,
    check=check,
    routes=router,
    errors=(404, 413, 422, 503),
    devices=lambda model: runtime.model_devices(model).values(),
)
