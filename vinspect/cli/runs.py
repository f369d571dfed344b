"""``vinspect runs compare``: training runs in MLflow, thin over :mod:`components.registry`.

mlflow and matplotlib are imported inside the command so ``--help`` is fast; a
:class:`components.registry.RegistryError` is reported by the root command group (exit 1).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from vinspect.cli.model import fmt_time, fmt_value, mlflow_context

console = Console()
err = Console(stderr=True)


def register(runs_app: typer.Typer) -> None:
    """Add ``compare`` to the ``vinspect runs`` sub-app."""

    @runs_app.command("compare")
    def compare_cmd(
        experiment: str | None = typer.Option(
            None, "--experiment", "-e", help="MLflow experiment (default: $VINSPECT_EXPERIMENT)."
        ),
        metric: list[str] = typer.Option(
            [], "--metric", "-m", help="Metrics to show and plot (repeatable; default: all final metrics)."
        ),
        param: list[str] = typer.Option([], "--param", "-p", help="Parameters to show (repeatable)."),
        sort_by: str | None = typer.Option(
            None, "--sort-by", "-s", help="Metric name, 'start_time' or 'params.<name>' (default: first --metric)."
        ),
        ascending: bool = typer.Option(False, "--ascending", help="Sort lowest first."),
        limit: int = typer.Option(50, "--limit", min=1, help="Newest runs considered."),
        plot: Path | None = typer.Option(None, "--plot", help="Write a PNG chart of the metrics here."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Compare training runs: parameters and metrics as a sorted table, and a PNG plot."""
        from components.registry import compare_runs, plot_runs

        client, _, default_experiment = mlflow_context(None)
        experiment = experiment or default_experiment
        rows = compare_runs(
            client,
            experiment,
            metric or None,
            sort_by or (metric[0] if metric else None),
            descending=not ascending,
            max_results=limit,
        )
        if as_json:
            console.print_json(json.dumps(rows))
        else:
            metric_cols = list(metric) or sorted({k for r in rows for k in r["metrics"] if "/" not in k})[:6]
            table = Table(title=f"{experiment}: {len(rows)} run(s)")
            for col in ("run", "started (UTC)", "status", "dataset", *param, *metric_cols):
                table.add_column(col, overflow="fold")
            for r in rows:
                table.add_row(
                    r["run_name"] or r["run_id"][:8],
                    fmt_time(r["start_time"]),
                    r["status"],
                    (r["dataset_id"] or "")[:12],
                    *(r["params"].get(p, "") for p in param),
                    *(fmt_value(r["metrics"].get(m)) for m in metric_cols),
                )
            console.print(table)
        if plot is not None:
            wanted = list(metric) or sorted({k for r in rows for k in r["metrics"] if "/" not in k})[:6]
            out = plot_runs(rows, wanted, plot)
            err.print(f"plot written to {out}")
