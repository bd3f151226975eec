"""The offline side of GEMM: data loaders (:mod:`.data` dispatching to :mod:`.public`, :mod:`.aiconfigurator`
over :mod:`.aiconfigurator_campaigns`, :mod:`.deepbench`, and the user's own measurements), the
fit (:mod:`.train`), held-out evaluation (:mod:`.evaluate`), calibration to a user's own device
(:mod:`.calibrate`) and the table checks of ``perfcost score`` (:mod:`.score`); :data:`TRAINING` ties them
to the service domain of the same name."""

from __future__ import annotations

from service.core.model import TabularModel
from service.core.settings import Settings
from training.core.domain import DomainTraining, TableScorer
from training.domains.gemm.calibrate import calibrate_gemm
from training.domains.gemm.data import available_gemm_datasets
from training.domains.gemm.evaluate import evaluate_gemm
from training.domains.gemm.score import check_columns, output_schema, score_chunk
from training.domains.gemm.train import default_gemm_datasets, train_gemm, train_gemm_model


def first_start(settings: Settings) -> str:
    """The default model: bundled data plus every public dataset that is cached or mirrored."""
    datasets = default_gemm_datasets(settings)
    train_gemm_model(datasets, settings)
    skipped = [name for name in available_gemm_datasets(settings) if name not in datasets]
    note = f"; skipped (not cached or mirrored): {', '.join(skipped)}" if skipped else ""
    return f"trained on {', '.join(datasets)}{note}"


def stale(model: TabularModel, settings: Settings) -> str | None:
    """A served model trained without a dataset that is now cached or mirrored is out of date."""
    trained = {d.get("name") for d in model.card.get("datasets", [])}
    new = [d for d in default_gemm_datasets(settings) if d not in trained]
    if not new:
        return None
    return (
        f"version {model.version} was trained without {', '.join(new)}, which is now cached or mirrored: "
        "run 'perfcost train gemm', then reload (POST /v1/admin/reload or kill -HUP) to serve a model "
        "that knows it"
    )


TRAINING = DomainTraining(
    train=train_gemm,
    evaluate=evaluate_gemm,
    first_start=first_start,
    stale=stale,
    calibrate=calibrate_gemm,
    table=TableScorer(check_columns, output_schema, score_chunk),
)
