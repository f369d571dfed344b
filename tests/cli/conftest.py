"""Helpers of the CLI tests: the real ``vinspect`` app on the local stack.

The fixtures these tests share with the core tests (the local stack, registered tiny models, CVAT
exports, the tiny trained model) come from ``tests/conftest.py``.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner


@pytest.fixture
def env(local_stack, monkeypatch):
    """The local stack's MLflow and S3 settings in the environment, and wide rich tables."""
    local_stack.apply_env(monkeypatch)
    monkeypatch.setenv("COLUMNS", "200")  # keep rich tables on one line per row


def run_cli(*args: str) -> tuple[int, str]:
    """Run ``vinspect ARGS`` through the real app (its root group included): the exit code and the output."""
    from vinspect.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output
