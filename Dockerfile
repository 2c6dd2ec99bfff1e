# Embedding service image: CPU torch, the app installed from source. Commands live in docker-compose.yml.
FROM python:3.12-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODEL_PATH=/var/lib/embedding-models \
    DATA_DIR=/var/lib/embedding-data \
    UVICORN_HTTP=entrypoints.http.protocol:GuardedHttpToolsProtocol

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /app

COPY constraints.txt ./
RUN TORCH_VERSION="$(grep '^torch==' constraints.txt | cut -d= -f3)" \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install -c constraints.txt -e . \
    && useradd --create-home --uid 10001 app \
    && mkdir -p /var/lib/embedding-models /var/lib/embedding-data \
    && chown app /var/lib/embedding-models /var/lib/embedding-data

# Declared after the chown: Docker named volumes and ECS Fargate bind mounts at this path start as a copy of it,
# owned by the app user (an undeclared Fargate bind mount is root-owned and unwritable with USER 10001).
VOLUME ["/var/lib/embedding-models"]
VOLUME ["/var/lib/embedding-data"]

USER 10001
EXPOSE 8080 8003
