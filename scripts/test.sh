#!/usr/bin/env bash
# The one test command, for a fresh Debian 12 machine as for a developer's:
#   scripts/test.sh [pytest arguments]
# As root it installs the Debian packages the tests drive (skopeo, and Distribution
# as docker-registry to compare with); then the package with its test extra; then
# pytest. Each install step is skipped when everything is already there.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
cd "$ROOT"

# skopeo: the real client (containers/image, as podman and buildah) for push/pull
# tests. docker-registry: CNCF Distribution 2.8.2, the reference the tests compare to
# and the other side of the interoperability tests. podman: a second real client (pull,
# retag, push, pull again), run as root on the vfs storage driver.
if ! is_root; then
    echo "warning: not root: skipping apt; the Debian packages named in ensure_debian_packages below must already be installed" >&2
fi
# chromium: Debian's browser, which Playwright drives headless in the web UI tests
# (tests/web); Playwright's own browser download does not work offline.
# buildah, mmdebstrap, runc: the container image test (tests/packaging) builds the
# Dockerfile with buildah on a Debian 12 base made by mmdebstrap (Docker Hub's base is
# not reachable everywhere the tests run) and runs it with podman on runc (Debian's crun
# refuses hosts with cgroup v1 and v2 mounted side by side). systemd: systemd-analyze
# checks packaging/dockyard.service.
# wrk, apache2-utils (ab), curl: the load generators and the pull client of the
# benchmark, whose quick mode the suite runs (tests/test_bench.py) so that it keeps working.
# redis-server, nginx-light, gettext-base (envsubst): tests/replicas runs several
# replicas sharing a Redis behind nginx with deploy/nginx.conf, rendered by envsubst.
# ceph-mon, ceph-osd, radosgw, ceph-common: Ceph's RADOS Gateway on a one-node cluster
# (tests/s3/rgw_server.py), a second S3 server for the s3 driver and the registry.
# strace: tests/storage/test_filesystem_durability.py reads the order of fsyncs and
# renames of a staged write from the system calls themselves.
ensure_debian_packages skopeo docker-registry podman chromium buildah mmdebstrap runc systemd \
    wrk apache2-utils curl redis-server nginx-light gettext-base ceph-mon ceph-osd radosgw \
    ceph-common strace
quiet_debian_registry

choose_python
ensure_installed test

status=0
"$PYTHON" -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
fi
exit "$status"
