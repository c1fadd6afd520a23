"""The registry a configuration describes, built without the web application."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BUILD = """
import asyncio, sys
from dockyard.config import load_config
from dockyard.registry.assembly import build_registry

registry = build_registry(load_config(sys.argv[1]).config)
asyncio.run(registry.close())
options = registry.options
print(options.delete_enabled, options.read_only, options.hold_limit)
print(sorted(m for m in ("aiohttp", "prometheus_client", "jinja2") if m in sys.modules))
"""


def test_the_command_line_registry_loads_no_http_stack(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}, delete: {{enabled: true}},"
        " maintenance: {readonly: {enabled: true}}}\n"
        "dockyard: {gc: {settle: 5s}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", BUILD, str(config)], capture_output=True, text=True, check=True
    )
    options, modules = result.stdout.splitlines()
    # The options come from the configuration: deletes on, read-only, and the hold limit
    # a 5 s settle allows.
    assert options == "True True 2.0"
    # garbage-collect and delete-repository start in a quarter of a second
    # instead of half: the web application and its metrics are not imported.
    assert modules == "[]"
