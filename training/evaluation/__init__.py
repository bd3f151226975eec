"""Held-out accuracy by protocol: metrics (``metrics``), plots (``plots``) and the GEMM protocol runner
scoring the served model (``gemm``). The ``perfcost evaluate`` commands are in :mod:`training.evaluate`."""
