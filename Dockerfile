# syntax=docker/dockerfile:1
# Image of the market-data flows (tardis-bytewax-streaming): the main flow and the CCXT
# instruments flow, run with `python -m bytewax.run`. Build and try it:
#   docker build -t tardis-bytewax-streaming:0.1.0 .
#   docker run --rm tardis-bytewax-streaming:0.1.0      # replays the bundled sample to /app/output
# In Kubernetes the manifests in k8s/ set the command, the configuration (STREAMING_CONFIG) and
# the credentials; see k8s/README.md.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /venv
ENV PATH=/venv/bin:$PATH
WORKDIR /src
# The project and its pinned dependencies (pyproject.toml) into /venv; no test extras.
COPY pyproject.toml README.md ./
COPY dataflows/ dataflows/
COPY operators/ operators/
COPY connectors/ connectors/
COPY features/ features/
# -I: import from site-packages, not from the sources in the working directory
RUN pip install . \
    && python -I -c "import bytewax, dataflows.main, dataflows.instruments"

FROM python:${PYTHON_VERSION}-slim-bookworm
# tini: PID 1 that forwards SIGTERM to the flow (a bare Python PID 1 ignores it) and reaps.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --no-create-home --home-dir /app --shell /usr/sbin/nologin app
COPY --from=build /venv /venv
# NUMBA_CACHE_DIR: the compiled kernels' cache (features.jit) must be writable; the pods'
# root filesystem is read-only and /tmp an emptyDir, so each pod compiles once at start.
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache
WORKDIR /app
# The embedded default run (no STREAMING_CONFIG): ./streaming.yaml replays the bundled sample
# (paths relative to the file) into ./output.
COPY streaming.yaml ./
COPY connectors/tardis/sample/ connectors/tardis/sample/
# Pod helpers: the hostfile and recovery-partition init steps of k8s/statefulset.yaml, and the
# entry points the Bytewax helm chart (waxctl) runs from the working directory.
COPY --chmod=0755 k8s/scripts/write-hostfile.sh k8s/scripts/init-recovery.sh k8s/scripts/entrypoint.sh ./
RUN ln -s init-recovery.sh entrypoint-recovery.sh \
    && mkdir -p /app/output \
    && chown app:app /app/output
USER 10001:10001
# 8080: /health and /metrics (monitoring.port, HEALTH_PORT); 9999: Bytewax peer traffic.
EXPOSE 8080 9999
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HEALTH_PORT', '8080') + '/health', timeout=4)"]
ENTRYPOINT ["tini", "--"]
CMD ["python", "-m", "bytewax.run", "dataflows.main"]
