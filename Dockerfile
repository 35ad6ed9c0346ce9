# syntax=docker/dockerfile:1
# The service image: no compilers, no model weights, non-root, configured by LLM_* env vars.
#   docker build -t llm-service .
#   docker run -p 9000:9000 -e LLM_MODEL_SERVER=vllm \
#     -e LLM_MODEL_SERVER_ENDPOINT=http://vllm:8000 -e LLM_MODEL_NAME=... llm-service

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
RUN pip install --no-cache-dir 'uv>=0.9'
WORKDIR /app
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project
COPY llm_service ./llm_service
COPY prompts ./prompts
RUN uv sync --locked --no-dev --no-editable

FROM python:${PYTHON_VERSION}-slim AS service
RUN useradd --create-home --uid 10001 llm
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY prompts ./prompts
COPY configs ./configs
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1 LLM_USVC_PORT=9000 \
    LLM_PROMPTS_DIR=/app/prompts
USER llm
EXPOSE 9000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v1/health_check' % os.environ.get('LLM_USVC_PORT', '9000'), timeout=2)"
ENTRYPOINT ["llm-service", "serve"]
