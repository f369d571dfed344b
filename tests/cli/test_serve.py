"""`vinspect serve` (``vinspect/cli/serve.py``) registers its four commands, each with help, and refuses bad options."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from vinspect.cli import serve


def test_serve_commands_registered_with_help():
    app = typer.Typer()
    serve.register(app)
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("model", "processor", "camera", "dashboard"):
        assert name in result.output
        sub = runner.invoke(app, [name, "--help"])
        assert sub.exit_code == 0 and sub.output.strip()


def test_model_needs_a_source():
    app = typer.Typer()
    serve.register(app)
    result = CliRunner().invoke(app, ["model", "--name", "m"])
    assert result.exit_code != 0
    assert "--uri, --champion or --champion-if-any is required" in result.output


def test_champion_needs_a_tracking_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("VINSPECT_HOME", "/nonexistent-vinspect-home")
    app = typer.Typer()
    serve.register(app)
    result = CliRunner().invoke(app, ["model", "--champion", "--name", "m"])
    assert result.exit_code != 0
    assert "MLFLOW_TRACKING_URI is not set" in result.output


def test_service_logs_are_not_flooded_by_one_http_line_per_image():
    import logging

    from vinspect.cli.serve import _logging

    httpx_logger = logging.getLogger("httpx")
    before = httpx_logger.level
    try:
        _logging("info")
        assert httpx_logger.getEffectiveLevel() == logging.WARNING
        httpx_logger.setLevel(logging.NOTSET)
        _logging("debug")
        assert httpx_logger.level == logging.NOTSET  # --log-level debug keeps every request line
    finally:
        httpx_logger.setLevel(before)


def test_processor_refuses_an_unknown_result_format(monkeypatch):
    monkeypatch.setenv("VINSPECT_RESULT_FORMAT", "xml")
    app = typer.Typer()
    serve.register(app)
    result = CliRunner().invoke(app, ["processor"])
    assert result.exit_code != 0
    assert "VINSPECT_RESULT_FORMAT" in result.output and "'vinspect', 'manuela'" in result.output


def test_camera_refuses_two_different_sources():
    app = typer.Typer()
    serve.register(app)
    result = CliRunner().invoke(app, ["camera", "synthetic:2", "--source", "s3://b/p/"])
    assert result.exit_code != 0 and "two sources given" in result.output
