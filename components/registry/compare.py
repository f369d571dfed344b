"""Compare training runs recorded in MLflow: a sortable table and a PNG plot."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.registry.core import RegistryError


def compare_runs(
    mlflow_client,
    experiment: str,
    metrics: Sequence[str] | None = None,
    sort_by: str | None = None,
    *,
    descending: bool = True,
    max_results: int = 200,
) -> list[dict]:
    """The runs of an experiment with their parameters and metrics, sorted.

    Args:
        mlflow_client: ``MlflowClient``.
        experiment: Experiment name.
        metrics: Metric names to keep in each row's ``metrics`` (None keeps all).
        sort_by: A metric name, ``start_time``, or a parameter as ``params.<name>``. Runs that
            lack the value sort last.
        descending: Sort order (highest first by default: metrics are scores).
        max_results: At most this many runs (newest first before sorting).

    Returns:
        One dict per run: ``run_id, run_name, status, start_time (ms), pipeline_run_id,
        dataset_id, git_revision, params, metrics``.

    Raises:
        RegistryError: When the experiment does not exist.
    """
    exp = mlflow_client.get_experiment_by_name(experiment)
    if exp is None:
        raise RegistryError(f"no MLflow experiment {experiment!r}; check VINSPECT_EXPERIMENT")
    runs = mlflow_client.search_runs(
        [exp.experiment_id], max_results=max_results, order_by=["attributes.start_time DESC"]
    )
    wanted = list(metrics) if metrics else None
    rows = []
    for run in runs:
        data_metrics = dict(run.data.metrics)
        rows.append(
            {
                "run_id": run.info.run_id,
                "run_name": run.info.run_name,
                "status": run.info.status,
                "start_time": int(run.info.start_time or 0),
                "pipeline_run_id": run.data.tags.get("vinspect.pipeline_run_id"),
                "dataset_id": run.data.tags.get("vinspect.dataset_id"),
                "git_revision": run.data.tags.get("vinspect.git_revision"),
                "params": dict(run.data.params),
                "metrics": ({m: data_metrics[m] for m in wanted if m in data_metrics} if wanted else data_metrics),
            }
        )
    if sort_by:
        rows.sort(key=lambda r: _sort_key(r, sort_by, descending))
    return rows


def _sort_key(row: dict, sort_by: str, descending: bool) -> tuple:
    if sort_by == "start_time":
        value: Any = row["start_time"]
    elif sort_by.startswith("params."):
        value = row["params"].get(sort_by[len("params.") :])
        try:
            value = float(value) if value is not None else None
        except ValueError:
            pass
    else:
        value = row["metrics"].get(sort_by)
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    if missing:
        return (1, 0)
    if isinstance(value, (int, float)):
        return (0, -value if descending else value)
    # Strings: sort ascending regardless; mixing orders for text is rarely what anyone wants.
    return (0, str(value))


def plot_runs(rows: Sequence[dict], metrics: Sequence[str], out_png: Path) -> Path:
    """A PNG bar chart of chosen metrics across runs (one group per run, oldest left).

    Args:
        rows: Output of :func:`compare_runs`.
        metrics: Metric names to draw.
        out_png: Where to write the PNG (written to a temp file then moved).

    Returns:
        The PNG path.

    Raises:
        RegistryError: No metrics asked for, or none of the runs has any of them.
    """
    if not metrics:
        raise RegistryError("plot_runs needs at least one metric name")
    runs = sorted(rows, key=lambda r: r["start_time"])
    runs = [r for r in runs if any(m in r["metrics"] for m in metrics)]
    if not runs:
        raise RegistryError(f"no run has any of the metrics {list(metrics)}")

    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in pipelines
    import matplotlib.pyplot as plt

    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(runs) * len(metrics) + 2), 4.5))
    try:
        for i, metric in enumerate(metrics):
            xs = [j + i * width for j in range(len(runs))]
            ys = [r["metrics"].get(metric, float("nan")) for r in runs]
            ax.bar(xs, ys, width=width, label=metric)
        ax.set_xticks([j + width * (len(metrics) - 1) / 2 for j in range(len(runs))])
        ax.set_xticklabels([r["run_name"] or r["run_id"][:8] for r in runs], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("value")
        ax.set_title("metrics across runs")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".png", dir=out_png.parent)
        os.close(fd)
        try:
            fig.savefig(tmp, format="png", dpi=100)
            os.replace(tmp, out_png)
        except BaseException:  # even Ctrl-C: no temp file left beside the plot; it re-raises
            Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        plt.close(fig)
    return out_png
