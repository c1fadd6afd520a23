# Shared by scripts/test.sh and scripts/serve.sh (sourced, not run): picks the Python
# to use and installs the package into it only when something is missing or stale.
#
# Debian's own python3 is "externally managed" (PEP 668): pip refuses to install into
# it, so there a virtual environment in .venv is used. Any other Python (pyenv, a
# distribution build, an already active virtualenv) is used as it is.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

is_root() { [ "$(id -u)" = 0 ]; }

# Installs the Debian packages given that are not installed yet; apt is not touched at
# all when every one is present, so a repeated run costs nothing.
ensure_debian_packages() {
    local missing=() package
    for package in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$package")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        echo "warning: no apt-get here; install these yourself: ${missing[*]}" >&2
        return 0
    fi
    if ! is_root; then
        echo "warning: not root, so not installing: ${missing[*]} (tests that need them will fail)" >&2
        return 0
    fi
    echo "installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
    quiet_debian_registry
}

# Debian's docker-registry package starts its own registry on port 5000 where an init
# system runs services; that would take the port `dockyard serve` defaults to.
quiet_debian_registry() {
    is_root || return 0
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        if systemctl is-enabled --quiet docker-registry.service 2>/dev/null \
            || systemctl is-active --quiet docker-registry.service 2>/dev/null; then
            echo "stopping and disabling Debian's docker-registry.service (it listens on :5000)" >&2
            systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
        fi
    elif [ -x /etc/init.d/docker-registry ]; then
        /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
    fi
}

# Sets PYTHON to the interpreter to use, creating .venv where the system Python is
# externally managed.
choose_python() {
    local base="${PYTHON:-python3}"
    if [ -n "${VIRTUAL_ENV:-}" ]; then
        PYTHON="$base"
        return 0
    fi
    if "$base" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
        if [ ! -x "$ROOT/.venv/bin/python" ]; then
            ensure_debian_packages python3-venv
            "$base" -m venv "$ROOT/.venv"
        fi
        PYTHON="$ROOT/.venv/bin/python"
    else
        PYTHON="$base"
    fi
}

# pip install -e "$ROOT$1" unless scripts/check_installed.py finds the editable install
# of this checkout and every pinned requirement already in place.
ensure_installed() {
    local extra="${1:-}"
    if "$PYTHON" "$ROOT/scripts/check_installed.py" "$ROOT" $extra; then
        return 0
    fi
    echo "installing dockyard${extra:+[$extra]} into $PYTHON" >&2
    PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --disable-pip-version-check -q -e "$ROOT${extra:+[$extra]}"
}
