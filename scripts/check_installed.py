"""Exit 0 when this checkout is installed (editable) with every requirement in place.

Used by the scripts to skip ``pip install -e`` when it would change nothing, which
keeps a repeated test run quick. Usage: ``check_installed.py REPO_ROOT [EXTRA]``.
Only the standard library: it runs before anything is installed.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

# "name==1.2.3", "name", "name[extra]>=1"; only exact pins are compared by version.
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9._-]+)(?:\[[^\]]*\])?\s*(?:==\s*([^;\s]+))?")


def satisfied(requirement: str) -> bool:
    match = REQUIREMENT.match(requirement)
    if match is None:
        return False
    name, pinned = match.groups()
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return pinned is None or installed == pinned


def editable_here(root: Path, project: dict[str, object]) -> bool:
    """The installed ``dockyard`` is an editable install of this very directory.

    Version and console scripts are compared too: they live in the installed metadata,
    not in the source tree, so a change to them in pyproject.toml needs a reinstall.
    """
    try:
        distribution = metadata.distribution("dockyard")
    except metadata.PackageNotFoundError:
        return False
    if distribution.version != project.get("version"):
        return False
    scripts = {e.name: e.value for e in distribution.entry_points if e.group == "console_scripts"}
    if scripts != project.get("scripts", {}):
        return False
    direct_url = distribution.read_text("direct_url.json")
    if not direct_url:
        return False
    info = json.loads(direct_url)
    return bool(info.get("dir_info", {}).get("editable")) and info.get("url") == root.as_uri()


def main() -> int:
    root = Path(sys.argv[1]).resolve()
    extra = sys.argv[2] if len(sys.argv) > 2 else None
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    requirements = list(project.get("dependencies", []))
    if extra:
        requirements += project.get("optional-dependencies", {}).get(extra, [])
    if not editable_here(root, project):
        return 1
    missing = [r for r in requirements if not satisfied(r)]
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
