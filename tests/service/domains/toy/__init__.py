"""A toy domain written only here, to prove that a new predictor is a new package plus one registration:
the time of a loop of ``n`` iterations, each costing about 3 ns. Its schemas, card, features and runtime
are all it defines; ``/v1/toy/predict`` and ``/v2/models/toy`` come from the contract."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, Field, StrictFloat

from service.core.cards import Card
from service.core.deps import Serving
from service.core.domain import Domain, RequestError
from service.core.model import TabularModel
from service.core.schemas import Interval, ModelRef, Strict

FEATURE_VERSION = "toy-1"
COLUMNS = ("log_n",)
DEVICE = "toy device"
MAX_N = 1e12


class ToyInstance(Strict):
    n: StrictFloat = Field(gt=0, description="Loop iterations")


class ToyRequest(Strict):
    instances: list[ToyInstance] = Field(min_length=1)
    coverage: StrictFloat = Field(default=0.9, gt=0.0, lt=1.0)


class ToyPrediction(BaseModel):
    runtime_ms: Interval | None
    out_of_distribution: bool


class ToyResponse(ModelRef):
    predictions: list[ToyPrediction]


class ToyCard(Card):
    largest_n: float


def features(instances: list[ToyInstance]) -> np.ndarray:
    return np.log(np.array([[inst.n] for inst in instances], dtype=float))


def check(request: ToyRequest, model: TabularModel, serving: Serving) -> None:
    for i, inst in enumerate(request.instances):
        if inst.n > MAX_N:
            raise RequestError(f"instances.{i}.n", f"n={inst.n:g} is beyond {MAX_N:g} iterations")


def predict(
    instances: list[ToyInstance], request: ToyRequest, model: TabularModel, serving: Serving
) -> list[dict[str, Any]]:
    largest = model.typed_card(ToyCard).largest_n
    runtime, _ = model.predict(features(instances), request.coverage, [DEVICE] * len(instances))["runtime_ms"]
    return [
        {
            "runtime_ms": {
                "value": float(runtime.value[i]),
                "low": float(runtime.low[i]),
                "high": float(runtime.high[i]),
            },
            "out_of_distribution": inst.n > largest,
        }
        for i, inst in enumerate(instances)
    ]


DOMAIN = Domain(
    name="toy",
    feature_version=FEATURE_VERSION,
    columns=COLUMNS,
    card_type=ToyCard,
    request=ToyRequest,
    instance=ToyInstance,
    prediction=ToyPrediction,
    response=ToyResponse,
    predict=predict,
    targets=("runtime_ms",),
    check=check,
    default=False,
)
