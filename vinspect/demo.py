"""The demo: every part of vinspect on one machine, through the same code paths as on a cluster."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from vinspect.local import StackConfig, StackError, up


def run_demo(*, data: str | None, images: int, epochs: int, imgsz: int, seed: int, runtime: bool, state: Path | None) -> int:
    """Run the demo; returns the process exit code."""
    from vinspect.cli.local import print_status

    cfg = StackConfig.from_env(state=state)
    os.environ["VINSPECT_HOME"] = str(cfg.state)
    try:
        env = up(cfg, log=lambda m: typer.echo(m, err=True))
    except StackError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        return 1
    os.environ.update(env)
    if not print_status(cfg):
        return 1
    return 0
