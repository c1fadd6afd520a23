"""The list of tests Distribution 2.8 is known to fail names tests that exist."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.api_helpers import DISTRIBUTION_28_KNOWN_FAILURES

ROOT = Path(__file__).resolve().parents[2]


def test_every_known_failure_names_an_existing_test() -> None:
    # A renamed test would otherwise silently drop out of the list's meaning.
    for node_id in DISTRIBUTION_28_KNOWN_FAILURES:
        module, _, test = node_id.partition("::")
        source = ROOT / module
        assert source.is_file(), node_id
        function = test.split("[", 1)[0]
        names = {
            node.name
            for node in ast.walk(ast.parse(source.read_text()))
            if isinstance(node, ast.FunctionDef)
        }
        assert function in names, node_id
