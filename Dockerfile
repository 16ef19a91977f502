# syntax=docker/dockerfile:1
# One image recipe for the four services and the ops console: each image holds only its
# app and the packages that app declares, installed from uv.lock. Build from the repository root
# (the uv workspace), naming the service and its port:
#   docker build --build-arg SERVICE=audit-log-service --build-arg PORT=8003 \
#     -t taskevents/audit-log-service:dev .
# tests/integration/test_k8s_images.py replays this file's uv commands and start command in
# a clean virtual environment for each service, since CI has no Docker engine.
ARG SERVICE
ARG PORT

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.11-slim-bookworm AS build
ARG SERVICE
COPY --from=uv /uv /bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# Dependencies first, from the lock and the workspace's manifests only: this layer stays
# cached until uv.lock or a pyproject.toml changes.
COPY pyproject.toml uv.lock ./
COPY libs/taskevents/pyproject.toml libs/taskevents/
COPY cli/pyproject.toml cli/
COPY notification-service/pyproject.toml notification-service/
COPY recurring-task-service/pyproject.toml recurring-task-service/
COPY audit-log-service/pyproject.toml audit-log-service/
COPY websocket-service/pyproject.toml websocket-service/
COPY ops-console/pyproject.toml ops-console/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package ${SERVICE}
# Then the shared library and the service, installed as wheels (not editable): the
# runtime image holds the virtual environment only, no source tree.
COPY libs/taskevents libs/taskevents
COPY ${SERVICE} ${SERVICE}
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package ${SERVICE}
# One name to start whichever service this image holds.
RUN ln -s ${SERVICE} /app/.venv/bin/taskevents-service

FROM python:3.11-slim-bookworm
ARG PORT
RUN groupadd --system --gid 10001 taskevents \
 && useradd --system --uid 10001 --gid taskevents --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin taskevents
# Owned by root and read-only to the service: it runs with a read-only root file system and
# writes nothing outside /tmp (bytecode was compiled at build time).
COPY --from=build --chown=root:root /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TASKEVENTS_ENV=production \
    APP_HOST=0.0.0.0 \
    APP_PORT=${PORT}
USER 10001:10001
WORKDIR /tmp
EXPOSE ${PORT}
# Exec form: the service is PID 1 and gets SIGTERM itself; uvicorn then stops accepting,
# finishes the requests in flight (at most 10 s) and runs the lifespan's shutdown.
# `taskevents-service migrate` (the Helm hook Job, for a service with a database) applies
# the migrations and exits.
ENTRYPOINT ["taskevents-service"]
CMD ["serve"]
