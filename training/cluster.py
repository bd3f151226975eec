"""A Dask client for work beyond one process: an existing cluster's scheduler, or a LocalCluster here."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client, LocalCluster

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
