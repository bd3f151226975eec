"""Work beyond one process: a Dask client of an existing cluster's scheduler or of a LocalCluster here, and
training on it."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import dask.dataframe as dd
import joblib
import lightgbm as lgb
import numpy as np
import pandas as pd
from distributed import Client, LocalCluster
from sklearn.base import BaseEstimator

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 30


class ClusterError(RuntimeError):
    """No cluster to run on; the message says which address and why."""


@contextmanager
def dask_client(scheduler: str | None, workers: int) -> Iterator[Client]:
    """A client of ``scheduler`` (``tcp://host:port``), or of a LocalCluster of ``workers`` processes with
    one thread each: the models predict and fit single-threaded, so processes are what parallelise."""
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterError(f"--scheduler {scheduler}: cannot connect ({exc})") from exc
        with client:
            n = len(client.scheduler_info().get("workers", {}))
            log.info("cluster %s: %d workers", scheduler, n)
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            # The dashboard needs bokeh and a port; nothing here reads it.
            dashboard_address=None,
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        log.info("local cluster: %d worker processes", workers)
        yield client


_ACTIVE: ContextVar[Client | None] = ContextVar("perfcost_dask_client", default=None)


def active_client() -> Client | None:
    """The client of the :func:`training_on_cluster` block this runs in, if any."""
    return _ACTIVE.get()


@contextmanager
def training_on_cluster(scheduler: str | None, workers: int) -> Iterator[Client]:
    """Within the block, cross-validation folds (every joblib ``Parallel`` of training) run as Dask tasks,
    and deployed LightGBM models are fit data-parallel across the workers (:func:`fit_estimator`)."""
    with dask_client(scheduler, workers) as client, joblib.parallel_config(backend="dask"):
        token = _ACTIVE.set(client)
        try:
            yield client
        finally:
            _ACTIVE.reset(token)


def fit_estimator(estimator: BaseEstimator, X: pd.DataFrame, y: np.ndarray) -> BaseEstimator:
    """``estimator.fit(X, y)``; a LightGBM one inside :func:`training_on_cluster` is fit by
    ``lightgbm.dask`` on partitions spread over the workers, and returned as the same local
    ``LGBMRegressor`` (so it is saved and exported as any other)."""
    client = active_client()
    if client is None or not isinstance(estimator, lgb.LGBMRegressor):
        return estimator.fit(X, y)
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    # One partition per worker: LightGBM's data-parallel learner trains one shard per worker.
    features = dd.from_pandas(X.reset_index(drop=True), npartitions=n_workers)
    target = dd.from_pandas(pd.Series(y, name="y"), npartitions=n_workers)
    distributed = lgb.DaskLGBMRegressor(client=client, **estimator.get_params())
    log.info("fitting LightGBM on %d rows across %d Dask workers", len(y), n_workers)
    with warnings.catch_warnings():
        # Threads per worker are the cluster's to set: lightgbm.dask ignores n_jobs, and says so.
        warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
        return distributed.fit(features, target).to_local()
