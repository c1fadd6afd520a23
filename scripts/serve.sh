#!/usr/bin/env bash
# Installs Dockyard (editable, from this checkout) if needed and runs the registry:
#   scripts/serve.sh                 embedded defaults: /var/lib/registry, port 5000
#   scripts/serve.sh config.yml      a registry:2 config file
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

choose_python
ensure_installed
exec "$PYTHON" -m dockyard serve "$@"
