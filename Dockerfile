# syntax=docker/dockerfile:1
# Two images from one file; each installs the tree with its extra of pyproject.toml (no dependency list here):
#   docker build --target api    -t drlora-api .     # the HTTP API: `.[api]`, no torch
#   docker build --target worker -t drlora-worker .  # the CUDA training worker: `.[worker]` on a CUDA torch image
# Both run `python -m drlora_cli.main api|worker|db upgrade|keys create|models add|estimate`.

ARG PYTHON_IMAGE=python:3.11-slim
# The worker's torch comes from this image and must be >= 2.10 (F.grouped_mm); pip keeps it, since it satisfies
# the `engine` extra's `torch>=2.10`. Pick the CUDA build your driver supports (docs/models.md).
ARG TORCH_IMAGE=pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime

# ---- API: web, database and broker client libraries only ---------------------------------------------------------
FROM ${PYTHON_IMAGE} AS api
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PYTHONPATH=/app DRLORA_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY api ./api
COPY service ./service
COPY migrations ./migrations
COPY drlora_cli ./drlora_cli
# The engine's standard-library modules only: dataset validation, atomic writes, asset ids, the pre-flight estimate.
COPY drlora_core/__init__.py drlora_core/formats.py drlora_core/atomic.py drlora_core/assets.py \
     drlora_core/model_facts.py drlora_core/estimate.py ./drlora_core/
RUN pip install ".[api]"
RUN useradd --uid 10001 --create-home drlora && mkdir -p /data && chown drlora /data
USER drlora
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --retries=6 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"
ENTRYPOINT ["python", "-m", "drlora_cli.main"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]

# ---- worker: CUDA torch plus the whole tree (engine, demo model) ------------------------------------------------
FROM ${TORCH_IMAGE} AS worker
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PYTHONPATH=/app DRLORA_DATA_DIR=/data \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /app
# Fail the build, not the first job, if the base image's torch is too old for the engine.
RUN python -c "import torch, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); \
sys.exit(0 if v >= (2, 10) else f'torch {torch.__version__} in TORCH_IMAGE; drlora needs >= 2.10')"
COPY pyproject.toml README.md alembic.ini ./
COPY api ./api
COPY service ./service
COPY worker ./worker
COPY migrations ./migrations
COPY drlora_cli ./drlora_cli
COPY drlora_core ./drlora_core
COPY bench ./bench
COPY scripts ./scripts
RUN pip install ".[worker]"
RUN useradd --uid 10001 --create-home drlora && mkdir -p /data /models && chown drlora /data
USER drlora
# Answers while a job trains (Celery's ping cannot: the solo pool blocks its consumer for the whole job).
HEALTHCHECK --interval=30s --timeout=10s --retries=3 --start-period=60s CMD ["python", "-m", "drlora_cli.main", "worker", "health"]
ENTRYPOINT ["python", "-m", "drlora_cli.main"]
CMD ["worker"]
