# syntax=docker/dockerfile:1
# The API image: FastAPI, SQLAlchemy, Celery client; no torch, no CUDA (about 200 MB, not 5 GB).
# Targets: `api` (also runs `prunesearch db upgrade` for the migrate service) and `dashboard`
# (optuna-dashboard on the same Optuna storage). Build from the repository root:
#   docker build -f docker/api.Dockerfile --target api -t prunesearch-api .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS api
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /app

# Dependencies first: this layer is rebuilt only when the list changes.
COPY docker/requirements-api.txt /tmp/requirements-api.txt
RUN pip install -r /tmp/requirements-api.txt

COPY pyproject.toml README.md ./
COPY search ./search
COPY service ./service
COPY workers ./workers
COPY migrations ./migrations
COPY prunesearch ./prunesearch
# --no-deps: pyproject.toml's dependencies include torch for the worker; the API never imports it.
RUN pip install --no-deps . \
 && python -c "import importlib.util as u, sys; sys.exit('torch must not be in the API image' if u.find_spec('torch') else 0)" \
 && python -c "import service.api.app, service.migrate, prunesearch.cli; service.api.app.create_app" \
 && rm -rf /app/*

RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home prunesearch \
 && mkdir -p /data /models \
 && chown prunesearch:prunesearch /data
USER 10001:10001
WORKDIR /data
ENV PRUNESEARCH_DATA_DIR=/data \
    PRUNESEARCH_HOST=0.0.0.0
EXPOSE 8000
CMD ["prunesearch", "api"]

FROM api AS dashboard
USER 0:0
# The same optuna major as the workers write with; psycopg (v3) is already installed.
RUN pip install "optuna>=5.0,<6" "optuna-dashboard>=0.19,<1"
USER 10001:10001
EXPOSE 8080
CMD ["sh", "-c", "exec optuna-dashboard --storage-class RDBStorage --host 0.0.0.0 --port 8080 \"$PRUNESEARCH_OPTUNA_STORAGE_URL\""]
