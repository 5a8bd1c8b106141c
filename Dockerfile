# llm-proxy container image.
#
# Two stages on one base: the builder has compilers and turns the project and every
# dependency into wheels installed in /opt/venv; the runtime stage copies only that venv.
# BASE_IMAGE may be the official Python image (python at /usr/local/bin) or a plain Debian
# bookworm with python3 and python3-venv (python at /usr/bin, as scripts/image.sh builds it
# offline), so every step calls `python3` from PATH. No step depends on the CPU
# architecture: the same file builds amd64 and arm64.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
SHELL ["/bin/sh", "-eu", "-c"]
# Versions float with the base image's Debian release; pinning them would tie the file to
# one snapshot of one base. Debian's python3 needs its headers from python3-dev ($extra is
# empty or that one word, so it is left unquoted on purpose).
# hadolint ignore=DL3008,SC2086
RUN apt-get update \
 && extra="" \
 && if [ "$(command -v python3)" = /usr/bin/python3 ]; then extra=python3-dev; fi \
 && apt-get install -y --no-install-recommends build-essential $extra \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=120
RUN python3 -m venv /opt/venv
WORKDIR /src
# The index settings (a mirror, a CA bundle) arrive as an optional build secret read
# through PIP_CONFIG_FILE, so nothing about the build host lands in a layer or in history.
ENV PIP_CONFIG_FILE=/run/secrets/pipconf
# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change.
COPY pyproject.toml README.md ./
RUN --mount=type=secret,id=pipconf \
    python3 -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
      > requirements.txt \
 && /opt/venv/bin/pip wheel --wheel-dir /wheels --requirement requirements.txt \
 && /opt/venv/bin/pip install --no-index --find-links /wheels --requirement requirements.txt
COPY proxy ./proxy
RUN --mount=type=secret,id=pipconf \
    /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-index --no-deps /wheels/llm_proxy-*.whl \
 && /opt/venv/bin/llm-proxy --version

FROM ${BASE_IMAGE} AS runtime
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="llm-proxy" \
      org.opencontainers.image.description="OpenAI-compatible LLM gateway (Sanic, uvloop, aiohttp)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 llm-proxy \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin llm-proxy
COPY --from=builder /opt/venv /opt/venv
COPY examples/config.yaml /etc/llm-proxy/config.yaml
# Bytecode was compiled at install time; a read-only root filesystem cannot take more.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8000
# python, not curl: the slim image has no curl. LLM_PROXY_PORT moves the listener.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('LLM_PROXY_PORT', '8000'), timeout=2)"]
# Exec form: the proxy is PID 1 and gets SIGTERM itself; Sanic handles it (readiness
# fails, the listener closes, in-flight requests drain, exit 0) and reaps its workers.
ENTRYPOINT ["llm-proxy"]
CMD ["serve", "--config", "/etc/llm-proxy/config.yaml"]
