"""``vinspect cvat setup`` and ``vinspect review push``: CVAT as the start and the end of the loop."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _names(value: str) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()]


def cvat_client(cvat_url: str | None):
    """A logged-in cvat-sdk client from ``--cvat-url`` / ``$CVAT_URL`` and the CVAT credentials in settings."""
    from components.data.cvat_pull import make_client
    from vinspect.settings import CVATSettings

    settings = CVATSettings.from_env()
    url = cvat_url or settings.url
    if not url:
        raise typer.BadParameter("no CVAT URL: pass --cvat-url or set CVAT_URL")
    return make_client(
        url,
        token=settings.token.get_secret_value() if settings.token else None,
        username=settings.username,
        password=settings.password.get_secret_value() if settings.password else None,
        ca_bundle=settings.ca_bundle,
    )


def _model_predictor(conf: float):
    from components.data.cvat_setup import champion_predictor
    from serving.model_client import ModelClient
    from vinspect.settings import ModelServerSettings

    return champion_predictor(ModelClient.from_settings(ModelServerSettings.from_env()), conf=conf)


def register_cvat(app: typer.Typer) -> None:
    """Add ``vinspect cvat setup``."""

    @app.command("setup")
    def setup_cmd(
        cvat_url: Optional[str] = typer.Option(None, "--cvat-url", help="CVAT server URL (default: $CVAT_URL)"),
        project: str = typer.Option("metal-nuts", "--project", help="Project name (found by exact name or created)"),
        labels: str = typer.Option("scratch,bent", "--labels", help="Labels in class-id order"),
        images: Optional[str] = typer.Option(
            None, "--images", help="Images for a task: folder, .zip or s3://bucket/prefix"
        ),
        task_name: Optional[str] = typer.Option(None, "--task-name", help="Task name (default: the source's name)"),
        annotations: Optional[Path] = typer.Option(
            None, "--annotations", help="Pre-annotate from YOLO label files in this folder"
        ),
        annotation_classes: Optional[str] = typer.Option(
            None, "--annotation-classes", help="Class names of those files (default: read from the folder)"
        ),
        from_model: bool = typer.Option(
            False, "--from-model", help="Pre-annotate with the serving model ($VINSPECT_MODEL_URL)"
        ),
        min_score: float = typer.Option(0.25, "--min-score", help="Lowest model score kept as a pre-annotation"),
        segment_size: int = typer.Option(0, "--segment-size", help="Frames per job (0: one job)"),
        annotator: Optional[str] = typer.Option(
            None, "--annotator", help="User to find or register ($CVAT_ANNOTATOR_PASSWORD) and assign"
        ),
        annotator_email: Optional[str] = typer.Option(None, "--annotator-email", help="E-mail for a new annotator"),
        timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait for CVAT to build the task"),
    ) -> None:
        """Create (idempotently) the project with its labels, a task of images with pre-annotations, and an annotator.

        Prints the task URL.
        """
        import os

        from components.data.cvat_setup import setup

        if annotations is not None and from_model:
            raise typer.BadParameter("give --annotations or --from-model, not both")
        s3_client = None
        if images and images.startswith("s3://"):
            from vinspect.settings import S3Settings

            s3_client = S3Settings.from_env().client()
        predict = _model_predictor(min_score) if from_model else None
        with cvat_client(cvat_url) as client:
            report = setup(
                client,
                project=project,
                labels=_names(labels),
                images=images,
                task_name=task_name,
                s3_client=s3_client,
                annotations=annotations,
                annotation_classes=_names(annotation_classes) if annotation_classes else None,
                predict=predict,
                min_score=min_score,
                segment_size=segment_size,
                annotator=annotator,
                annotator_email=annotator_email,
                annotator_password=os.environ.get("CVAT_ANNOTATOR_PASSWORD"),
                timeout=timeout,
            )
        typer.echo(
            f"project: {report.project_id} ({'created' if report.project_created else 'found'})"
            + (f", labels added: {','.join(report.labels_added)}" if report.labels_added else "")
        )
        if report.task_id is not None:
            typer.echo(
                f"task: {report.task_url} ({'created' if report.task_created else 'found, left as it is'}; "
                f"{report.frames} frames, {report.boxes} pre-annotated boxes)"
            )
        if report.annotator:
            typer.echo(
                f"annotator: {report.annotator} ({'registered' if report.annotator_created else 'found'})"
                + (f", jobs {report.jobs_assigned}" if report.jobs_assigned else "")
            )
