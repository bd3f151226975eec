"""The domains this service serves: the one list of them.

Everything that serves or trains a domain (the ``/v1`` and ``/v2`` routes, the model registry, first
start, the training commands, the card writer, ``perfcost score``) reads it from :data:`DOMAINS`. A new
domain is a package beside these (see ``README.md`` here) and one entry below.
"""

from __future__ import annotations

from service.core.domain import Domains
from service.domains import cpu, gemm, mlir

DOMAINS = Domains((gemm.DOMAIN, cpu.DOMAIN, mlir.DOMAIN))
