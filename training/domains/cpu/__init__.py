"""The offline side of CPU: the SPEC CPU2017, UCI and NCPP loaders (:mod:`.data`), the fit, card and
publishing of the served per-benchmark models (:mod:`.train`), and the held-out evaluations: SPEC against
the published figures (:mod:`.evaluate`), UCI and NCPP as outside checks (:mod:`.other_datasets`);
:data:`TRAINING` ties them to the service domain of the same name."""

from __future__ import annotations

from service.core.settings import Settings
from training.core.datasets import get_spec, is_available
from training.core.domain import DomainTraining
from training.domains.cpu.evaluate import evaluate_cpu
from training.domains.cpu.train import train_cpu, train_cpu_model


def first_start(settings: Settings) -> str:
    """The default model: every suite of SPEC CPU2017 (why_not checked it is cached or mirrored)."""
    train_cpu_model(settings)
    return "trained on spec-cpu2017"


def why_not(settings: Settings) -> str | None:
    """SPEC CPU2017 is not bundled: without a cached or mirrored copy there is nothing to train on."""
    if not is_available(get_spec("spec-cpu2017"), settings):
        return (
            "spec-cpu2017 is neither cached nor mirrored; run 'perfcost data fetch spec-cpu2017' (or set "
            "PERFCOST_DATA_MIRROR), then 'perfcost train cpu' and reload, to serve /v1/cpu/predict"
        )
    return None


TRAINING = DomainTraining(train=train_cpu, evaluate=evaluate_cpu, first_start=first_start, why_not=why_not)
