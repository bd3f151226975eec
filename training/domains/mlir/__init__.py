"""The offline side of MLIR: the loader of programs collected by ``perfcost collect mlir`` (:mod:`.data`),
the fit, card and publishing of the five per-target models, ``perfcost train mlir`` and first start's
quick model (:mod:`.train`), and the held-out evaluation by random split or left-out program family,
``perfcost evaluate mlir`` (:mod:`.evaluate`). The training programs' profile the card records is the
service's (:mod:`service.domains.mlir.profile`), which checks requests against it. :data:`TRAINING` ties
them to the service domain of the same name."""

from __future__ import annotations

from training.core.domain import DomainTraining
from training.domains.mlir.evaluate import evaluate_mlir
from training.domains.mlir.train import first_start, train_mlir, why_not

TRAINING = DomainTraining(train=train_mlir, evaluate=evaluate_mlir, first_start=first_start, why_not=why_not)
