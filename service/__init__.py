"""perfcost runtime: request/response schemas, feature modules, model loading and the HTTP service."""

__version__ = "0.1.0"
