# Dockyard as a container image, laid out as registry:2 is: the configuration in
# /etc/docker/registry/config.yml (registry:2's own, unchanged), images in the volume
# /var/lib/registry, port 5000. So
#   docker run -d -p 5000:5000 -v /opt/data/registry:/var/lib/registry dockyard
# takes the place of registry:2, on the same data directory and config file.
#
# Build: docker build -t dockyard .   (or: buildah build --format docker -t dockyard .)
# BASE is any Debian 12 (bookworm) image; the default is Docker Hub's. Python is
# Debian's python3 (3.11); the dependencies are the versions pinned in pyproject.toml,
# from PyPI.
ARG BASE=docker.io/library/debian:bookworm-slim
FROM ${BASE}

ENV LANG=C.UTF-8 \
    PATH=/opt/dockyard/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1

COPY pyproject.toml README.md /usr/src/dockyard/
COPY dockyard /usr/src/dockyard/dockyard

# One layer: Python and a virtual environment with Dockyard in it; then what only the
# build needed (pip, python3-venv, apt's lists and archives, the sources) goes. pip
# trusts the system's certificate store (ca-certificates, and whatever CA the base image
# adds, as behind a TLS-intercepting proxy) rather than its own bundle.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends python3 python3-venv ca-certificates; \
    python3 -m venv /opt/dockyard; \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_NO_CACHE_DIR=1 \
        PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/dockyard/bin/pip install /usr/src/dockyard; \
    /opt/dockyard/bin/pip uninstall -y pip setuptools; \
    apt-get purge -y --auto-remove python3-venv python3.11-venv python3-pip-whl python3-setuptools-whl; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /usr/src/dockyard /root/.cache; \
    groupadd --gid 10000 dockyard; \
    useradd --uid 10000 --gid dockyard --home-dir /var/lib/registry --no-create-home \
        --no-log-init --shell /usr/sbin/nologin dockyard; \
    mkdir -p /var/lib/registry /etc/docker/registry; \
    chown dockyard:dockyard /var/lib/registry; \
    dockyard --version

COPY packaging/config.yml /etc/docker/registry/config.yml
COPY packaging/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
COPY packaging/healthcheck.py /usr/local/lib/dockyard/healthcheck.py

VOLUME ["/var/lib/registry"]
EXPOSE 5000
# The entry point starts as root only to hand /var/lib/registry to the dockyard user
# (uid 10000), then runs the server as that user; --user runs it as another one.
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["/etc/docker/registry/config.yml"]
# /debug/health on the address the configuration gives (HTTP or HTTPS).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/opt/dockyard/bin/python", "/usr/local/lib/dockyard/healthcheck.py"]
