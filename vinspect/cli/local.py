"""`vinspect local up|down|status|reset`: the embedded stack."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vinspect.local import SERVICES, StackConfig, down, reset, state_size, status, up

_STATE = typer.Option(None, "--state", help="State directory (default $VINSPECT_HOME or ./.vinspect).")
_S3 = typer.Option(None, "--s3-port", help="S3 server port (default 9000, or VINSPECT_LOCAL_S3_PORT).")
_MLFLOW = typer.Option(None, "--mlflow-port", help="MLflow port (default 5000, or VINSPECT_LOCAL_MLFLOW_PORT).")
_KAFKA = typer.Option(None, "--kafka-port", help="Kafka port (default 9092, or VINSPECT_LOCAL_KAFKA_PORT).")


def _cfg(state, s3_port, mlflow_port, kafka_port) -> StackConfig:
    return StackConfig.from_env(state=state, s3_port=s3_port, mlflow_port=mlflow_port, kafka_port=kafka_port)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def print_status(cfg: StackConfig) -> bool:
    """Print a status table and the state directory's size; True when every service answers."""
    from rich.console import Console
    from rich.table import Table

    result = status(cfg)
    table = Table(title=f"vinspect local stack ({cfg.state})")
    for col in ("service", "state", "pid", "port", "detail"):
        table.add_column(col)
    for service in SERVICES:
        row = result[service]
        table.add_row(
            service,
            "[green]up[/green]" if row["ok"] else "[red]down[/red]",
            str(row["pid"] or "-"),
            str(row["port"] or "-"),
            row["detail"],
        )
    console = Console()
    console.print(table)
    size = state_size(cfg) if cfg.state.is_dir() else 0
    # Plain echo: rich would wrap a long path in the middle of the size.
    typer.echo(f"state: {cfg.state} ({_size(size)}); `vinspect local down` keeps it, `vinspect local reset` deletes it")
    return all(r["ok"] for r in result.values())


def register(app: typer.Typer) -> None:
    @app.command("up")
    def up_cmd(
        state: Optional[Path] = _STATE,
        s3_port: Optional[int] = _S3,
        mlflow_port: Optional[int] = _MLFLOW,
        kafka_port: Optional[int] = _KAFKA,
    ) -> None:
        """Start what is not running of the S3 server, MLflow and the Kafka broker; keeps all state."""
        cfg = _cfg(state, s3_port, mlflow_port, kafka_port)
        up(cfg, log=lambda m: typer.echo(m, err=True))
        ok = print_status(cfg)
        typer.echo(f"settings for clients: {cfg.env_file}  (e.g. `set -a; . {cfg.env_file}; set +a`)")
        raise typer.Exit(0 if ok else 1)

    @app.command("down")
    def down_cmd(state: Optional[Path] = _STATE) -> None:
        """Stop what `up` started (by pid, children included); everything stored is kept for the next `up`."""
        cfg = _cfg(state, None, None, None)
        stopped = down(cfg, log=lambda m: typer.echo(m, err=True))
        typer.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")

    @app.command("reset")
    def reset_cmd(
        state: Optional[Path] = _STATE,
        yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    ) -> None:
        """Stop the stack and delete its state: S3 objects, MLflow runs and registry, Kafka messages, credentials."""
        cfg = _cfg(state, None, None, None)
        if not cfg.state.exists():
            typer.echo(f"nothing to reset: {cfg.state} does not exist")
            return
        if not yes:
            size = _size(state_size(cfg))
            typer.confirm(
                f"Delete {cfg.state} ({size}): every S3 object, MLflow run, registered model and Kafka message?",
                abort=True,
            )
        reset(cfg, log=lambda m: typer.echo(m, err=True))

    @app.command("status")
    def status_cmd(
        state: Optional[Path] = _STATE,
        s3_port: Optional[int] = _S3,
        mlflow_port: Optional[int] = _MLFLOW,
        kafka_port: Optional[int] = _KAFKA,
    ) -> None:
        """Check each service for real (list buckets, an MLflow API call, Kafka metadata) and report the state's size.

        Exits 1 if any is down.
        """
        cfg = _cfg(state, s3_port, mlflow_port, kafka_port)
        raise typer.Exit(0 if print_status(cfg) else 1)
