"""Dockyard's web UI: server-rendered pages over any v2 registry's HTTP API.

Inside ``dockyard serve`` it is mounted at ``/ui`` and reaches the server over
loopback; ``dockyard ui`` runs it alone against any registry (Dockyard, Distribution,
zot, ...), configured like hyper/docker-registry-web.
"""

from dockyard.web.app import create_ui_app, mount_in_server, run_standalone, standalone_app
from dockyard.web.settings import UISettings, settings_for_server, settings_from_env

__all__ = [
    "UISettings",
    "create_ui_app",
    "mount_in_server",
    "run_standalone",
    "settings_for_server",
    "settings_from_env",
    "standalone_app",
]
