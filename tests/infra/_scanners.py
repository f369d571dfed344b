"""The scanners the infra checks call (network-config-analyzer, checkov), found or explained.

Each lives in its own virtualenv made by the Makefile (see infra/tools.py). ``make test`` sets
``VINSPECT_REQUIRE_SCANNERS=1``: there a missing scanner fails the test, so CI can never pass by
skipping the checks. Run by hand without them, the tests skip and say how to install them.
"""

from __future__ import annotations

import os

import pytest

from infra.tools import ToolMissingError, tool_path


def require_tool(name: str) -> str:
    """Path of the scanner ``name``; fail (under make test) or skip when it is missing."""
    try:
        return tool_path(name)
    except ToolMissingError as exc:
        if os.environ.get("VINSPECT_REQUIRE_SCANNERS") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
