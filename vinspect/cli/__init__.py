"""The ``vinspect`` command: one entry point, thin over the Python API.

Each part of the project registers its verbs from its own module (``vinspect/cli/<part>.py``),
which imports heavy libraries only inside command bodies so that ``--help`` stays instant.

Errors are caught once, here: a :class:`vinspect.errors.VinspectError` raised by any command
prints ``error: <message>`` on stderr (no traceback) and exits with the error's ``exit_code``; a
command only catches what it turns into another outcome. The catch sits in the root command
group, which every invocation passes through (the console script and ``typer.testing.CliRunner``
alike); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer
from typer.core import TyperGroup

from vinspect.errors import VinspectError


class _RootGroup(TyperGroup):
    """The ``vinspect`` group: runs the chosen command and reports a :class:`VinspectError` once."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VinspectError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=exc.exit_code) from None


app = typer.Typer(
    cls=_RootGroup,
    name="vinspect",
    help="Visual inspection MLOps on OpenShift AI: CVAT -> Kubeflow Pipelines -> YOLO -> ONNX -> "
    "MLflow/S3 -> KServe, and a Kafka/Knative runtime with a live dashboard.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_SUBAPPS = {
    "local": "The embedded local stack (S3, MLflow, Kafka) on loopback.",
    "data": "Datasets: import CVAT exports, pull from CVAT, validate, synthesize.",
    "model": "Models: train, export to ONNX, evaluate; list, promote and roll back versions.",
    "pipeline": "The Kubeflow training pipeline: compile, run locally, submit, schedule.",
    "runs": "Training runs in MLflow.",
    "serve": "Runtime services: model server, image processor, camera, dashboard.",
    "infra": "Cluster manifests: render, validate, bootstrap.",
    "cvat": "CVAT: project, labels, tasks with pre-annotations, annotators.",
    "review": "The review queue: frames the line selected, pushed to CVAT as pre-annotated tasks.",
    "retrain": "Retraining on drift: receive drift CloudEvents, submit the training pipeline.",
}
subapps = {name: typer.Typer(help=text, no_args_is_help=True) for name, text in _SUBAPPS.items()}
for _name, _sub in subapps.items():
    app.add_typer(_sub, name=_name)


def _register(module: str, *apps: typer.Typer) -> None:
    try:
        mod = importlib.import_module(f"vinspect.cli.{module}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("vinspect.cli."):
            return  # that part is not installed in this image
        raise
    mod.register(*apps)


_register("local", subapps["local"])
_register("data", subapps["data"])
_register("model", subapps["model"])
_register("runs", subapps["runs"])
_register("pipeline", subapps["pipeline"])
_register("serve", subapps["serve"])
_register("infra", subapps["infra"])
_register("demo", app)  # `vinspect demo`
_register("loop", subapps["cvat"], subapps["review"], subapps["retrain"])


def main() -> None:
    """Console entry point (a :class:`VinspectError` is reported by the root group, see the module docstring)."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
