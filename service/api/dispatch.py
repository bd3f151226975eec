"""One way to answer a domain's prediction request, whichever dialect (``/v1`` or ``/v2``) it came in.

The model-free checks, the model's checks, then the prediction: micro-batched with every other request
for the same model, coverage and batch key (from either dialect), in a worker thread when the request is
large, or on the event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from service.core.deps import Serving, require_model
from service.core.domain import Domain

if TYPE_CHECKING:
    from service.core.model import TabularModel


def model_for(domain: Domain, request: Any, serving: Serving) -> TabularModel:
    """The served model, after the checks that need none (RequestError, or a 503 when none serves)."""
    if domain.precheck is not None:
        domain.precheck(request, serving)
    return require_model(serving.snapshot, domain.name, serving.first_start)


async def predict(
    domain: Domain, request: Any, model: TabularModel, serving: Serving
) -> list[dict[str, Any]]:
    """Response rows of a request on ``model``; RequestError if the domain refuses it."""
    if domain.check is not None:
        domain.check(request, model, serving)

    def run(instances: list[Any]) -> list[dict[str, Any]]:
        return domain.predict(instances, request, model, serving)

    if domain.offload(request):
        rows: list[dict[str, Any]] = await run_in_threadpool(run, list(request.instances))
        return rows
    if domain.batch_key is None:
        return run(list(request.instances))
    key = (domain.name, id(model), request.coverage, *domain.batch_key(request))
    return await serving.batcher.submit(key, list(request.instances), run)
