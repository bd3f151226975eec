# perfcost service image. Each RUN step is a command the README and .ci/run also use
# (tests/code/test_packaging.py checks that they stay the same).

# --- dependencies: their own layer, rebuilt only when the lock changes ---
FROM python:3.11-slim AS deps
# lib_lightgbm.so links the system's OpenMP runtime (libgomp.so.1), which slim images do not ship.
RUN apt-get update && apt-get install --yes --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements-service.txt constraints.txt pyproject.toml README.md ./
RUN python -m pip install --quiet --upgrade pip
# The service's locked dependency set alone first (no project code yet), so this layer caches.
# requirements-service.txt is `uv pip compile pyproject.toml` without extras: no IREE, no test tools.
RUN python -m pip install --quiet -r requirements-service.txt

# --- the package and models trained at build time ---
FROM deps AS build
COPY service/ service/
COPY training/ training/
COPY datasets/ datasets/
RUN python -m pip install --quiet -c constraints.txt -e .
# Public data is used when a build arg points at a mirror copied into the context (offline builds).
ARG PERFCOST_DATA_MIRROR=
ENV PERFCOST_DATA_MIRROR=${PERFCOST_DATA_MIRROR} PERFCOST_MODEL_DIR=/app/models MPLBACKEND=Agg
RUN perfcost train gemm
RUN perfcost train mlir

# --- runtime: non-root, models baked in ---
FROM python:3.11-slim AS runtime
RUN apt-get update && apt-get install --yes --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 10001 perfcost
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
# The service and its models only: serving needs no training code (python -m service never imports it).
COPY --from=build --chown=perfcost:perfcost /app/service /app/service
COPY --from=build --chown=perfcost:perfcost /app/models /app/models
ENV PATH=/opt/venv/bin:$PATH PERFCOST_MODEL_DIR=/app/models PERFCOST_HOST=0.0.0.0 PERFCOST_PORT=8000
USER perfcost
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"
# The service's entry point: uvicorn on service.app:app_from_env with the limits and timeouts of the settings.
ENTRYPOINT ["python", "-m", "service"]
