# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target api    -t drlora-api .     # the HTTP API: no torch, no engine (only drlora_core.formats)
#   docker build --target worker -t drlora-worker .  # the CUDA training worker (also runs migrations and admin)
# Both run the repository tree from /app with PYTHONPATH, and the same commands the tests run:
# `python -m drlora_cli.main api|worker|db upgrade|keys create|models add`.

ARG PYTHON_IMAGE=python:3.11-slim
ARG TORCH_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime

# ---- API: web, database and broker client libraries only ---------------------------------------------------------
FROM ${PYTHON_IMAGE} AS api
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PYTHONPATH=/app DRLORA_DATA_DIR=/data
WORKDIR /app
# The service dependencies of pyproject.toml, without torch/transformers (the API never imports them).
RUN pip install "fastapi>=0.115" "uvicorn>=0.30" "python-multipart>=0.0.9" "pydantic>=2.7" "pydantic-settings>=2.3" \
        "sqlalchemy>=2.0.30" "alembic>=1.13" "psycopg[binary]>=3.2" "celery>=5.4" "redis>=5.0" "httpx>=0.27"
COPY api ./api
COPY migrations ./migrations
COPY alembic.ini ./
COPY drlora_cli ./drlora_cli
# The engine package marker and the standard-library dataset validator; nothing else of the engine.
COPY drlora_core/__init__.py drlora_core/formats.py drlora_core/assets.py ./drlora_core/
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
# torch comes with the base image; pin nothing that would replace it.
RUN pip install "transformers>=5.0" "safetensors>=0.4" "tokenizers>=0.21" "tqdm>=4.66" \
        "fastapi>=0.115" "uvicorn>=0.30" "python-multipart>=0.0.9" "pydantic>=2.7" "pydantic-settings>=2.3" \
        "sqlalchemy>=2.0.30" "alembic>=1.13" "psycopg[binary]>=3.2" "celery>=5.4" "redis>=5.0" "httpx>=0.27"
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
COPY alembic.ini ./
COPY drlora_cli ./drlora_cli
COPY drlora_core ./drlora_core
RUN useradd --uid 10001 --create-home drlora && mkdir -p /data && chown drlora /data
USER drlora
ENTRYPOINT ["python", "-m", "drlora_cli.main"]
CMD ["worker"]
