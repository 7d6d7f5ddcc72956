# syntax=docker/dockerfile:1

# nano-banana-gateway: OpenAI-compatible image API in front of Nano Banana resellers.
#
#   docker build -t nano-banana-gateway .
#   docker run --rm -p 8000:8000 nano-banana-gateway
#
# With no config file and no token variables the gateway serves from its built-in
# offline mock upstream. Real upstreams come either from environment variables
# (ACEDATA_API_TOKENS, XHUOAPI_API_TOKENS, DEFAPI_API_TOKENS, GATEWAY_CLIENT_KEYS,
# GATEWAY_ADMIN_KEY, GATEWAY_REDIS_URL) or from a mounted TOML file. The command reads
# a file only when it is given --config, so ENTRYPOINT fixes host and port and leaves
# CMD empty: whatever follows the image name (or a Kubernetes `args:`) is appended, e.g.
#
#   docker run --rm -p 8000:8000 \
#     -v "$PWD/config.toml:/etc/nano-banana-gateway/config.toml:ro" \
#     -e ACEDATA_TOKEN=... \
#     nano-banana-gateway --config /etc/nano-banana-gateway/config.toml
#
# A later --port wins over the one in ENTRYPOINT.
#
# tests/test_image_contents.py replays this file's COPY, ENV and pip steps in a fresh
# virtual environment and starts the result, so keep every step in that plain form.

FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what `pip wheel .` reads: the package and the files pyproject.toml names.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# Wheels for the project and all its dependencies, so the runtime stage needs no
# network, no compiler and no source tree.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .


FROM python:3.11-slim

LABEL org.opencontainers.image.title="nano-banana-gateway" \
      org.opencontainers.image.description="OpenAI-compatible Images API gateway over Nano Banana upstreams" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The wheels are bind-mounted rather than copied so they never become a layer, and
# --no-index proves the runtime install takes nothing from the network.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --no-log-init --uid 10001 --gid gateway \
       --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin gateway \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/nano-banana-gateway

# The state directory: without Redis, each client's day of usage (SQLite), so a restart
# keeps it. Mount a volume here to keep it across containers; "" keeps it in memory.
ENV GATEWAY_STATE_DIR=/var/lib/nano-banana-gateway

# Numeric, so Kubernetes' runAsNonRoot can verify it without looking up a name.
USER 10001:10001

EXPOSE 8000

# slim has no curl; any error (refused, timeout, non-2xx) makes urlopen raise and exit 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# Exec form: the gateway is PID 1 and receives SIGTERM itself, so uvicorn stops
# accepting connections and lets in-flight image requests finish for up to
# [server] shutdown_grace_seconds (600 by default). Give `docker stop -t` or the
# orchestrator's grace period a little more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["nano-banana-gateway", "--host", "0.0.0.0", "--port", "8000"]
CMD []
