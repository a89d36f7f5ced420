# One image for the API and the workers (the command differs); docker-compose.yml runs the
# topology and `make compose-test` builds and runs it end to end (docs/deploy.md).
#
#   docker build -t autoprune .                       # python:3.11-slim, wheels from PyPI
#   docker build --build-arg BASE_IMAGE=... --build-arg PIP_INSTALL_ARGS="..." -t autoprune .
#
# BASE_IMAGE: any Debian-like image with python3 (3.11) and its venv module.
# PIP_INSTALL_ARGS: extra pip options for the dependencies, e.g. a mirror or a local wheelhouse
#   ("--no-index --find-links http://127.0.0.1:8765/", with `docker build --network host`).
#   torch from PyPI is the CUDA build (works on CPU and GPU hosts; ~5 GB image). For a CPU-only
#   image add PyTorch's CPU index: "--extra-index-url https://download.pytorch.org/whl/cpu".
# BUILD_PACKAGES: Debian packages needed to compile an sdist on a platform without wheels
#   (e.g. "build-essential"); purged in the layer that uses them.
# Plain Dockerfile syntax (no BuildKit-only instructions), so the legacy builder and
# docker-compose v1 build it too.

ARG BASE_IMAGE=python:3.11-slim

# Stage 1 (builder): the project as a wheel. Only setuptools is installed here.
FROM ${BASE_IMAGE} AS builder
ARG PIP_INSTALL_ARGS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/build && /opt/build/bin/pip install $PIP_INSTALL_ARGS "setuptools>=68"
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY autoprune ./autoprune
COPY solvers ./solvers
COPY api ./api
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /dist .

# Stage 2 (runtime): the dependencies in a venv, then the project's wheel. The dependency layer
# is rebuilt only when pyproject.toml (or an argument) changes, not on every code change; it is
# installed here rather than copied from another stage, because a copy of the ~5 GB venv costs
# minutes and a second layer. Build packages, if asked for, leave in the same layer.
FROM ${BASE_IMAGE} AS runtime
ARG PIP_INSTALL_ARGS=""
ARG BUILD_PACKAGES=""
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 AUTOPRUNE_DATA_DIR=/data
RUN useradd --system --uid 10001 --user-group --home-dir /app --create-home autoprune \
    && mkdir -p /data && chown autoprune:autoprune /data
COPY pyproject.toml /tmp/pyproject.toml
# triton (~0.9 GB) is a torch dependency that the CPU path, export and ONNX never use.
RUN set -e; \
    if [ -n "$BUILD_PACKAGES" ]; then \
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $BUILD_PACKAGES; \
    fi; \
    python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt; \
    python3 -m venv /opt/venv; \
    pip install $PIP_INSTALL_ARGS -r /tmp/requirements.txt; \
    pip uninstall -y triton || true; \
    if [ -n "$BUILD_PACKAGES" ]; then \
        apt-get purge -y --auto-remove $BUILD_PACKAGES && rm -rf /var/lib/apt/lists/*; \
    fi; \
    rm /tmp/pyproject.toml /tmp/requirements.txt
COPY --from=builder /dist /tmp/dist
RUN pip install --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist
COPY deploy/healthcheck.py /opt/autoprune/healthcheck.py
USER autoprune
WORKDIR /app
# Uploads, job inputs, checkpoints, artifacts (and the SQLite file when no database URL is set).
VOLUME ["/data"]
EXPOSE 8000
# /healthz for `serve`, a database round trip for `worker` (deploy/healthcheck.py).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "/opt/autoprune/healthcheck.py"]
CMD ["autoprune", "serve", "--host", "0.0.0.0", "--port", "8000"]
