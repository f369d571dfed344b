"""``vinspect data``: import CVAT exports, pull from CVAT, validate datasets, synthesize nuts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from components.data.manifest import Manifest


def _classes(value: str) -> list[str]:
    return [c.strip() for c in value.split(",") if c.strip()]


def _summary(manifest: Manifest) -> None:
    counts = manifest.counts
    typer.echo(f"dataset_id: {manifest.dataset_id}")
    typer.echo(f"images: {json.dumps(counts['images'])}")
    typer.echo(f"boxes: {json.dumps(counts['boxes'])}")


def _s3(required: bool):
    from vinspect.settings import S3Settings

    settings = S3Settings.from_env()
    if required and not settings.endpoint_url and not settings.access_key_id:
        raise typer.BadParameter("S3 needs AWS_S3_ENDPOINT / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    return settings


def _upload(out: Path, manifest: Manifest) -> None:
    from components.data import upload_dataset

    settings = _s3(True)
    uri = upload_dataset(settings.client(), settings.data_bucket, out, progress=True)
    typer.echo(f"uploaded: {uri}")


def register(app: typer.Typer) -> None:
    """Add the data commands to the ``vinspect data`` sub-app."""

    @app.command("import")
    def import_(
        source: str = typer.Argument(..., help="CVAT export: folder, .zip, or s3://bucket/key.zip"),
        out: Path = typer.Option(..., "--out", help="Dataset folder to write (absent or empty)"),
        fmt: Optional[str] = typer.Option(
            None,
            "--format",
            help="Export format (detected if omitted): "
            "'YOLO 1.1', 'Ultralytics YOLO Detection 1.0', 'CVAT for images 1.1', 'COCO 1.0'",
        ),
        classes: str = typer.Option("scratch,bent", "--classes", help="Class names in id order"),
        map_by_name: bool = typer.Option(
            False, "--map-by-name", help="Map labels by name when the export's order differs"
        ),
        val: float = typer.Option(0.2, "--val", help="Validation fraction"),
        test: float = typer.Option(0.0, "--test", help="Test fraction (0: none)"),
        seed: int = typer.Option(0, "--seed", help="Split seed"),
        upload: bool = typer.Option(False, "--upload", help="Upload to S3 under datasets/<dataset_id>/"),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out"),
    ) -> None:
        """Import a CVAT export into a validated, split YOLO dataset with manifest.json."""
        from components.data import import_dataset

        s3_client = _s3(True).client() if source.startswith("s3://") else None
        manifest = import_dataset(
            source,
            out,
            fmt=fmt,
            classes=_classes(classes),
            map_by_name=map_by_name,
            val=val,
            test=test,
            seed=seed,
            s3_client=s3_client,
            overwrite=overwrite,
            progress=True,
        )
        _summary(manifest)
        if upload:
            _upload(out, manifest)

    @app.command("pull")
    def pull(
        out: Path = typer.Option(..., "--out", help="Dataset folder to write (absent or empty)"),
        cvat_url: Optional[str] = typer.Option(None, "--cvat-url", help="CVAT server URL (default: $CVAT_URL)"),
        task: Optional[int] = typer.Option(None, "--task", help="CVAT task id"),
        project: Optional[int] = typer.Option(None, "--project", help="CVAT project id"),
        fmt: str = typer.Option("Ultralytics YOLO Detection 1.0", "--format", help="CVAT export format"),
        include_all_jobs: bool = typer.Option(
            False,
            "--include-all-jobs",
            help="Also export jobs that are not yet completed (by default only completed annotation jobs, any stage)",
        ),
        classes: str = typer.Option("scratch,bent", "--classes", help="Class names in id order"),
        map_by_name: bool = typer.Option(False, "--map-by-name", help="Map labels by name when the order differs"),
        val: float = typer.Option(0.2, "--val", help="Validation fraction"),
        test: float = typer.Option(0.0, "--test", help="Test fraction (0: none)"),
        seed: int = typer.Option(0, "--seed", help="Split seed"),
        timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait for CVAT to prepare an export"),
        upload: bool = typer.Option(False, "--upload", help="Upload to S3 under datasets/<dataset_id>/"),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out"),
    ) -> None:
        """Export a CVAT task or project (completed jobs) and import it.

        Credentials: $CVAT_TOKEN or $CVAT_USERNAME/$CVAT_PASSWORD.
        """
        from components.data import import_dataset
        from components.data.cvat_pull import make_client
        from vinspect.settings import CVATSettings

        if (task is None) == (project is None):
            raise typer.BadParameter("give exactly one of --task or --project")
        settings = CVATSettings.from_env()
        url = cvat_url or settings.url
        if not url:
            raise typer.BadParameter("no CVAT URL: pass --cvat-url or set CVAT_URL")
        client = make_client(
            url,
            token=settings.token.get_secret_value() if settings.token else None,
            username=settings.username,
            password=settings.password.get_secret_value() if settings.password else None,
            ca_bundle=settings.ca_bundle,
            host=settings.host,
        )
        with client:
            manifest = import_dataset(
                None,
                out,
                fmt=fmt,
                classes=_classes(classes),
                map_by_name=map_by_name,
                cvat_client=client,
                task_id=task,
                project_id=project,
                include_all_jobs=include_all_jobs,
                val=val,
                test=test,
                seed=seed,
                cvat_timeout=timeout,
                overwrite=overwrite,
                progress=True,
            )
        _summary(manifest)
        if upload:
            _upload(out, manifest)

    @app.command("validate")
    def validate(dataset: Path = typer.Argument(..., help="Dataset folder written by import/pull")) -> None:
        """Re-check a dataset: file hashes, labels, boxes, duplicates across splits, data.yaml."""
        from components.data import validate_dataset

        report = validate_dataset(dataset, progress=True)
        typer.echo(json.dumps(report, indent=2))

    @app.command("synth")
    def synth(
        out: Path = typer.Option(..., "--out", help="Export folder to write (CVAT 'YOLO 1.1' layout)"),
        n: int = typer.Option(200, "-n", "--count", help="Number of images"),
        seed: int = typer.Option(0, "--seed", help="Seed (same seed, same images)"),
        size: int = typer.Option(256, "--size", help="Image side in pixels"),
    ) -> None:
        """Render synthetic metal nuts with scratches and bent notches as a YOLO 1.1 export."""
        from components.data import synthesize

        path = synthesize(out, n, seed=seed, size=size, progress=True)
        typer.echo(f"wrote {n} images to {path}; import with: vinspect data import {path} --out DIR")
