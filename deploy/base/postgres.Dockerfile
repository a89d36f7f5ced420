# A stand-in for the official postgres image, built from Debian packages only (PostgreSQL 15, the
# version of Debian bookworm). Its entrypoint honours the official image's variables:
# POSTGRES_PASSWORD (or _FILE), POSTGRES_USER, POSTGRES_DB, POSTGRES_INITDB_ARGS,
# POSTGRES_HOST_AUTH_METHOD, PGDATA, and runs /docker-entrypoint-initdb.d/*.sh|*.sql on first start.
ARG DEBIAN_IMAGE=autoprune-local/debian:bookworm
FROM ${DEBIAN_IMAGE}
ARG PG_MAJOR=15
ENV LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive PG_MAJOR=${PG_MAJOR}
# No cluster from the package's postinst: the entrypoint creates one in PGDATA on first start.
RUN mkdir -p /etc/postgresql-common \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-${PG_MAJOR} \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql /docker-entrypoint-initdb.d \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 3777 /var/run/postgresql
ENV PATH=/usr/lib/postgresql/${PG_MAJOR}/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 755 /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
ENTRYPOINT ["docker-entrypoint.sh"]
# Fast shutdown, as the official image.
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
