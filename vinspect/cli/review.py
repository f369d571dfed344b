"""``vinspect review push``: the review queue in S3 -> a pre-annotated CVAT task."""

from __future__ import annotations

from typing import Optional

import typer


def register_review(app: typer.Typer) -> None:
    """Add ``vinspect review push`` and ``vinspect review status``."""

    @app.command("status")
    def status(
        prefix: str = typer.Option(
            "review/", "--prefix", envvar="VINSPECT_REVIEW_PREFIX", help="Key prefix of the queue in the data bucket"
        ),
    ) -> None:
        """How many frames wait in the review queue."""
        from serving.review import ReviewStore
        from vinspect.settings import S3Settings

        s3 = S3Settings.from_env()
        typer.echo(f"pending: {ReviewStore(s3.client(), s3.data_bucket, prefix).size()}")

    @app.command("push")
    def push(
        cvat_url: Optional[str] = typer.Option(None, "--cvat-url", help="CVAT server URL (default: $CVAT_URL)"),
        project: str = typer.Option("metal-nuts", "--project", help="CVAT project name"),
        labels: str = typer.Option("scratch,bent", "--labels", help="Labels in class-id order"),
        limit: int = typer.Option(500, "--limit", help="Most frames per task"),
        segment_size: int = typer.Option(0, "--segment-size", help="Frames per job (0: one job)"),
        annotator: Optional[str] = typer.Option(
            None, "--annotator", help="Assign the task's jobs to this existing user"
        ),
        timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait for CVAT to build the task"),
        prefix: str = typer.Option(
            "review/", "--prefix", envvar="VINSPECT_REVIEW_PREFIX", help="Key prefix of the queue in the data bucket"
        ),
    ) -> None:
        """Turn the review queue into a CVAT task pre-annotated with the model's boxes; mark the items pushed."""
        from components.data.cvat_setup import ensure_user
        from components.data.review_push import push_review
        from serving.review import ReviewStore
        from vinspect.cli.cvat import _names, cvat_client
        from vinspect.settings import S3Settings

        s3 = S3Settings.from_env()
        store = ReviewStore(s3.client(), s3.data_bucket, prefix)
        with cvat_client(cvat_url) as client:
            annotator_id = ensure_user(client, annotator)[0] if annotator else None
            report = push_review(
                client,
                store,
                project=project,
                labels=_names(labels),
                limit=limit,
                segment_size=segment_size,
                annotator_id=annotator_id,
                timeout=timeout,
            )
        if not report.pushed:
            typer.echo("review queue is empty: nothing to push")
            return
        typer.echo(
            f"pushed {report.pushed} frame(s), {report.boxes} pre-annotated box(es)"
            + (" (task existed: items marked)" if report.reused_task else "")
        )
        typer.echo(f"task: {report.task_url}")
