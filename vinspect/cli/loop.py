"""Registers the feedback-loop verbs: ``vinspect cvat ...`` and ``vinspect review ...``."""

from __future__ import annotations

import typer


def register(cvat_app: typer.Typer, review_app: typer.Typer) -> None:
    """Add ``vinspect cvat setup`` and ``vinspect review push``."""
    from vinspect.cli.cvat import register_cvat
    from vinspect.cli.review import register_review

    register_cvat(cvat_app)
    register_review(review_app)
