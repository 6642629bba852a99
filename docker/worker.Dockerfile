# syntax=docker/dockerfile:1
# The GPU worker image: NVIDIA's CUDA base, Python 3.11 (uv's standalone build), and the project
# with its pinned torch (constraints.txt). torch==2.13.0 from PyPI is a CUDA 13 build that brings its own CUDA
# libraries; the host needs an NVIDIA driver that supports CUDA 13 (R580 or newer) and the
# NVIDIA Container Toolkit. For an older driver, take torch from PyTorch's index for another CUDA
# (uv prefers that index for the packages it has), e.g.
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
#   docker build -f docker/worker.Dockerfile -t prunesearch-worker .
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-base-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.11.7

FROM ${UV_IMAGE} AS uv

FROM ${CUDA_IMAGE}
ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=uv /uv /usr/local/bin/uv
RUN uv venv --python 3.11 /opt/venv
WORKDIR /app

# Dependencies first (torch is most of the image): rebuilt only when pyproject.toml changes. The onnx
# extra: the worker converts exports to ONNX on request (POST /v1/jobs/{id}/artifacts/{name}/onnx).
COPY pyproject.toml README.md constraints.txt ./
RUN uv pip install --python /opt/venv/bin/python \
      ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
      -r pyproject.toml -c constraints.txt --extra onnx \
 && python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

COPY search ./search
COPY service ./service
COPY workers ./workers
COPY migrations ./migrations
COPY prunesearch ./prunesearch
RUN uv pip install --python /opt/venv/bin/python --no-deps . \
 && python -c "import workers.celery_app, search.study" \
 && rm -rf /app/*

RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home prunesearch \
 && mkdir -p /data /models \
 && chown prunesearch:prunesearch /data
USER 10001:10001
WORKDIR /data
ENV PRUNESEARCH_DATA_DIR=/data
# One Celery process per container (--concurrency=1); give each container one GPU.
CMD ["prunesearch", "worker"]
