# One image for the API and the workers (the command differs). Not built or run in this
# project's CI: docker is not available there; docker-compose.yml shows the topology.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    AUTOPRUNE_DATA_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY autoprune ./autoprune
COPY solvers ./solvers
COPY api ./api
RUN pip install . && pip uninstall -y triton \
    && useradd --system --uid 10001 --home /app autoprune \
    && mkdir -p /data && chown autoprune /data
USER autoprune
VOLUME ["/data"]
EXPOSE 8000
CMD ["autoprune", "serve", "--host", "0.0.0.0", "--port", "8000"]
