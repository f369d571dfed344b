"""`vinspect demo`: the whole loop on the local stack (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vinspect.defaults import DEMO_TRAIN


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        data: Optional[str] = typer.Option(
            None,
            "--data",
            envvar="DATA",
            help="A CVAT export (dir, zip or s3://) to train on; default: synthetic metal nuts.",
        ),
        images: int = typer.Option(120, "-n", "--images", help="Synthetic images when --data is not given."),
        epochs: int = typer.Option(
            DEMO_TRAIN.epochs, "--epochs", help="Training epochs (from scratch: no pretrained weights offline)."
        ),
        imgsz: int = typer.Option(
            DEMO_TRAIN.imgsz, "--imgsz", help="Training and serving image size (the demo's fast profile)."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed for data, split and training."),
        runtime: bool = typer.Option(
            True,
            "--runtime/--no-runtime",
            help="Start model server, processor, camera and dashboard after the pipeline.",
        ),
        state: Optional[Path] = typer.Option(None, "--state", help="State directory (default ./.vinspect)."),
        min_map50: Optional[float] = typer.Option(None, "--min-map50", help="Override the quality gate's mAP50 floor."),
        min_class_map50: Optional[float] = typer.Option(
            None, "--min-class-map50", help="Override the gate's per-class mAP50 floor."
        ),
        smoke_min_classes: Optional[int] = typer.Option(
            None,
            "--smoke-min-classes",
            help="Classes the rollout's smoke test must find (-1 all, 0 none: server answers).",
        ),
    ) -> None:
        """Bring the local stack up, build a dataset, run the training pipeline locally, serve the champion."""
        from vinspect.demo import run_demo

        raise typer.Exit(
            run_demo(
                data=data,
                images=images,
                epochs=epochs,
                imgsz=imgsz,
                seed=seed,
                runtime=runtime,
                state=state,
                min_map50=min_map50,
                min_class_map50=min_class_map50,
                smoke_min_classes=smoke_min_classes,
            )
        )
