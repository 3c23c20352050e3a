# One image for every Symbi service; the command picks the service:
#   docker run symbi:local serve policy
# PYTHON_IMAGE must provide Python 3.11 with the venv module (python:3.11-slim-bookworm,
# or a local Debian bookworm rootfs built by scripts/build-base-image.sh for offline builds).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG UV_VERSION=0.13.8
# Extra CA certificates (*.crt) for building behind a TLS-intercepting proxy; build stage only.
COPY deploy/docker/ca-certificates/ /usr/local/share/ca-certificates/symbi-build/
RUN if ls /usr/local/share/ca-certificates/symbi-build/*.crt >/dev/null 2>&1; then update-ca-certificates >/dev/null; fi
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_NATIVE_TLS=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    UV_PROJECT_ENVIRONMENT=/opt/symbi
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install --no-cache-dir --disable-pip-version-check "uv==${UV_VERSION}"
WORKDIR /src
# Dependencies first (cached while only source changes), then the workspace itself.
COPY pyproject.toml uv.lock ./
COPY libs ./libs
COPY services ./services
RUN /opt/uv/bin/uv sync --frozen --no-dev --all-packages --no-editable --python python3

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 symbi \
 && useradd --system --uid 10001 --gid symbi --home-dir /var/lib/symbi --shell /usr/sbin/nologin symbi \
 && mkdir -p /var/lib/symbi /etc/symbi \
 && chown symbi:symbi /var/lib/symbi
COPY --from=build /opt/symbi /opt/symbi
ENV PATH=/opt/symbi/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SYMBI_STATE_DIR=/var/lib/symbi \
    SYMBI_METRICS_HOST=0.0.0.0 \
    SYMBI_METRICS_PORT=9100 \
    SYMBI_POLICY_HOST=0.0.0.0 \
    SYMBI_API_HOST=0.0.0.0
USER 10001:10001
WORKDIR /var/lib/symbi
EXPOSE 9100 50051 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/health/live' % os.environ.get('SYMBI_METRICS_PORT', '9100'), timeout=2)"]
ENTRYPOINT ["symbi"]
CMD ["serve", "api"]
