"""Jinja2 is loaded when the first page is rendered, not when a worker starts.

A registry whose page nobody opens keeps about 2 MiB less in every worker.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.servers import free_port

RENDER_ONE_PAGE = """
import asyncio, sys
from aiohttp.test_utils import TestClient, TestServer
from dockyard.api.app import create_app
from dockyard.config import load_config

async def main() -> None:
    app = create_app(load_config(sys.argv[1]).config)
    print("jinja2" in sys.modules)
    # The page asks the registry API on http.addr, which this server serves.
    async with TestClient(TestServer(app, host="127.0.0.1", port=int(sys.argv[2]))) as client:
        print("jinja2" in sys.modules)
        response = await client.get("/ui/")
        print(response.status, "jinja2" in sys.modules)

asyncio.run(main())
"""


def test_jinja2_is_loaded_by_the_first_page(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'data'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", RENDER_ONE_PAGE, str(config), str(port)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split("\n")[:3] == ["False", "False", "200 True"]
