"""``vinspect review push``: the review queue in S3 -> a pre-annotated CVAT task."""

from __future__ import annotations

from typing import Optional

import typer


def register_review(app: typer.Typer) -> None:
    """Add ``vinspect review push`` and ``vinspect review status``."""

    @app.command("status")
    def status() -> None:
        """How many frames wait in the review queue."""
        from serving.review import ReviewStore
        from vinspect.settings import S3Settings

        s3 = S3Settings.from_env()
        typer.echo(f"pending: {ReviewStore(s3.client(), s3.data_bucket).size()}")
