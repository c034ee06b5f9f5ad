# ASCOB as a container image.
#
#   docker build -t ascob . && docker run -d --rm -p8081:8081 ascob
#
# runs `ascob serve` (REST API on 0.0.0.0:8081, executor, and a local Prefect server inside the
# container) with its data in the volume /data; add -p4200:4200 for the Prefect UI (on
# 0.0.0.0:4200 in the container). Without ASCOB_ROOT_TOKEN a root token is
# generated once and kept in /data/root_token (`docker exec <container> cat /data/root_token`).
# For the scale-out picture (ascob api / ascob executor, PostgreSQL, a Prefect server, etcd) see
# deploy/compose.yaml and docs/deployment.md.
#
# BASE_IMAGE must provide Python 3.11 as `python3` with the venv module (Debian bookworm's
# python3 + python3-venv, or the official python:3.11-slim). Both stages use it, so the
# virtualenv built in the first one runs unchanged in the second.
# PIP_INDEX_URL / PIP_EXTRA_INDEX_URL (build arguments, optional) point pip at another package
# index for the build; they are not kept in the final image.

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/ascob
WORKDIR /src
COPY pyproject.toml README.md prefect.yaml ./
COPY ascob_api ascob_api
COPY ascob_flows ascob_flows
COPY backends backends
# a regular (non-editable) install of ASCOB with the PostgreSQL driver, compiled to bytecode
# (starts faster); pip itself is not needed at run time
RUN /opt/ascob/bin/pip install ".[postgres]" \
 && /opt/ascob/bin/pip uninstall -y pip

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="ASCOB" \
      org.opencontainers.image.description="One front door from automation portals to Jenkins, Rundeck and friends, on Prefect 3" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin ascob \
 && mkdir -p /data \
 && chown ascob:ascob /data
COPY --from=build /opt/ascob /opt/ascob
# the local Prefect server's UI listens on all interfaces too (-p4200:4200); its pages read
# from http://localhost:4200 unless ASCOB_PUBLIC_PREFECT_URL names the address browsers use
ENV PATH=/opt/ascob/bin:$PATH \
    ASCOB_HOME=/data \
    ASCOB_PREFECT_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/data"]
WORKDIR /data
USER ascob
EXPOSE 8081
# the Prefect UI of `ascob serve` (ASCOB_PREFECT_PORT)
EXPOSE 4200
# /api/health answers without a token. `ascob executor` has no HTTP port: compose files give
# it its own healthcheck (or disable this one).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/api/health', timeout=4)"]
CMD ["ascob", "serve", "--host", "0.0.0.0", "--port", "8081"]
