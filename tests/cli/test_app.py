"""The ``vinspect`` app (``vinspect/cli/__init__.py``) reports every ``VinspectError`` once: ``error: <message>``
on stderr, the error's exit code, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vinspect.errors import VinspectError

ROOT = Path(__file__).resolve().parents[2]


def _errors():
    from components.model.champion import ChampionUnavailable
    from components.model.export import ParityError
    from components.model.gate import GateError
    from pipelines.local import LocalRunError
    from pipelines.params import ParameterError
    from pipelines.schedule import CronError
    from pipelines.submit import SubmitError
    from vinspect.defaults import DefaultsError
    from vinspect.kafka_front import ProtocolError
    from vinspect.local import StackError
    from vinspect.settings import SettingsError

    return {
        ChampionUnavailable: RuntimeError,
        ParityError: RuntimeError,
        GateError: ValueError,
        LocalRunError: RuntimeError,
        ParameterError: ValueError,
        CronError: ValueError,
        SubmitError: RuntimeError,
        DefaultsError: ValueError,
        ProtocolError: ValueError,
        StackError: RuntimeError,
        SettingsError: RuntimeError,
    }


def test_model_pipeline_and_cli_errors_share_the_root_and_keep_their_builtin():
    for cls, builtin in _errors().items():
        assert issubclass(cls, VinspectError) and issubclass(cls, builtin), cls


def test_the_data_cvat_and_review_errors_carry_the_exit_code_their_commands_use():
    # `vinspect data|cvat|review` reported these with exit 2 (bad input) from their own catch; the
    # root group now does, from the class.
    from components.data import CVATError, DatasetError
    from serving.review import ReviewError

    for cls, builtin in ((DatasetError, ValueError), (CVATError, RuntimeError), (ReviewError, ValueError)):
        assert issubclass(cls, VinspectError) and issubclass(cls, builtin), cls
        assert cls.exit_code == 2, cls


def test_a_dataset_error_is_reported_by_the_root_group_with_exit_2(tmp_path):
    from vinspect.cli import app

    result = CliRunner().invoke(app, ["data", "validate", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "manifest.json" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_the_root_group_reports_a_vinspect_error_with_its_exit_code():
    from vinspect.cli import _RootGroup

    class Skipped(VinspectError):
        exit_code = 3

    app = typer.Typer(cls=_RootGroup)

    @app.command("a")
    def a() -> None:
        raise Skipped("optional parts skipped: kafka")

    @app.command("b")
    def b() -> None:
        raise KeyError("a bug")

    result = CliRunner().invoke(app, ["a"])
    assert result.exit_code == 3 and result.output == "error: optional parts skipped: kafka\n"
    bug = CliRunner().invoke(app, ["b"])
    assert bug.exit_code == 1 and isinstance(bug.exception, KeyError)  # a bug is not swallowed


def test_the_console_script_prints_the_message_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VINSPECT_DOTENV": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "vinspect", "pipeline", "submit", "--host", "http://127.0.0.1:9", "-p", "epoch=3"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: unknown pipeline parameter 'epoch'; did you mean 'epochs'?"), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        [
            "model",
            "evaluate",
            "m.onnx",
            ".",
            "--floors",
            '{"map50": 0.5}',
            "--model-name",
            "metal-nut",
            "--champion",
            "{}",
        ],
    ],
)
def test_bad_option_combinations_are_usage_errors(args):
    from vinspect.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "not both" in result.output


def test_a_missing_setting_is_one_line_and_exit_1(monkeypatch, tmp_path):
    from vinspect.cli import app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("VINSPECT_HOME", str(tmp_path / "no-stack"))
    monkeypatch.setenv("VINSPECT_DOTENV", "")
    result = CliRunner().invoke(app, ["model", "list"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: MLFLOW_TRACKING_URI is not set: run `vinspect local up`")
