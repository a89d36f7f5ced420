# A stand-in for python:3.11-slim, built from Debian packages only (for machines that reach
# Debian's archive but no container registry). Debian bookworm's python3 is 3.11, the version
# the project pins its wheels for. FROM an image made by deploy/compose_test.py:
# debootstrap --variant=minbase bookworm, then `docker import`.
ARG DEBIAN_IMAGE=autoprune-local/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && ln -s /usr/bin/python3 /usr/local/bin/python
CMD ["python3"]
