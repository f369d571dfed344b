"""``vinspect model list|register|promote|rollback`` and ``vinspect runs compare``: thin over
:mod:`components.registry` and :mod:`components.rollout`.

Heavy libraries (mlflow, kubernetes, httpx) are imported inside the commands so ``--help`` is fast.
"""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err = Console(stderr=True)


class Deploy(str, Enum):
    """Where a promote or rollback also deploys the version."""

    none = "none"
    local = "local"
    kserve = "kserve"


class Mode(str, Enum):
    """KServe deployment mode."""

    raw = "raw"
    modelmesh = "modelmesh"


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(1)


def _mlflow(model: str | None) -> tuple[Any, str, str]:
    from vinspect.settings import MLflowSettings

    settings = MLflowSettings.from_env()
    client = settings.client()  # SettingsError (no MLFLOW_TRACKING_URI): reported by the CLI, exit 1
    return client, model or settings.model_name, settings.experiment


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ms / 1000)) if ms else ""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _deploy(
    mlflow_client,
    model_name: str,
    version: str,
    *,
    deploy: Deploy,
    move_alias,
    namespace: str | None,
    data_connection: str | None,
    mode: Mode,
    service: str | None,
    model_url: str | None,
    golden: Path | None,
    timeout_s: float,
) -> dict:
    """Run the local or KServe rollout of ``version``; the alias moves through ``move_alias``.

    Returns the rollout's fields as a dict (what the commands here print from).
    """
    from components.registry import version_info
    from components.rollout import load_golden
    from components.rollout.deploy import deploy as deploy_version
    from infra.kube import KubeError

    if deploy is Deploy.kserve and (not namespace or not data_connection):
        _fail("--deploy kserve needs --namespace and --data-connection")
    info = version_info(mlflow_client, model_name, version)
    if not info["storage_uri"]:
        _fail(f"model {model_name} version {version} has no storage URI tag; was it registered by vinspect?")
    with console.status(f"Rolling out {model_name} v{version} ({deploy.value})..."):
        try:
            result = deploy_version(
                mlflow_client,
                model_name=model_name,
                version=version,
                mode="local" if deploy is Deploy.local else mode.value,
                storage_uri=info["storage_uri"],
                golden=load_golden(golden) if golden is not None else None,
                namespace=namespace,
                data_connection=data_connection,
                service=service,
                model_url=model_url,
                timeout_s=timeout_s,
                move_alias=move_alias,
            )
        except KubeError as exc:  # no kubeconfig, or the cluster refused to be read
            _fail(str(exc))
    return result.as_dict()


def _errors() -> tuple[type[Exception], ...]:
    """Errors whose message is the whole story: printed without a traceback."""
    from components.registry import RegistryError
    from components.rollout import RenderError, RolloutError, SmokeTestError

    return (RegistryError, RolloutError, SmokeTestError, RenderError)


def _report_rollout(result: dict) -> None:
    if result["status"] == "deployed":
        console.print(f"[green]deployed[/green] v{result['version']} ({result.get('url') or ''})")
        return
    err.print(f"[red]rolled back:[/red] {result['reason']}")
    if result.get("restore"):
        err.print(f"  {result['restore']}")
    raise typer.Exit(1)


_MODEL_OPT = typer.Option(None, "--model", help="Registered model name (default: $VINSPECT_MODEL_NAME).")
_DEPLOY_OPT = typer.Option(
    Deploy.none,
    "--deploy",
    help="Also deploy: 'local' (local model server) or 'kserve' (cluster); "
    "the alias then moves only after the rollout succeeds.",
)
_NS_OPT = typer.Option(None, "--namespace", "-n", help="KServe namespace (with --deploy kserve).")
_DC_OPT = typer.Option(
    None, "--data-connection", help="Name of the data-connection Secret for S3 (with --deploy kserve)."
)
_MODE_OPT = typer.Option(Mode.raw, "--mode", help="KServe mode: raw (OpenShift AI 3.x) or modelmesh (RHODS 2.x).")
_SERVICE_OPT = typer.Option(
    None, "--service", help="InferenceService / served model name (default: from the model name)."
)
_URL_OPT = typer.Option(
    None,
    "--model-url",
    help="v2 base URL: the local server (default $VINSPECT_MODEL_URL) or, for "
    "kserve, where to smoke-test from outside the cluster.",
)
_GOLDEN_OPT = typer.Option(
    None,
    "--golden",
    exists=True,
    dir_okay=False,
    help='JSON {"image.png": ["bent"], ...} of golden images for the smoke test (paths relative to it).',
)
_TIMEOUT_OPT = typer.Option(600.0, "--timeout", help="Seconds to wait for the deployment to be ready.")


def register(model_app: typer.Typer, runs_app: typer.Typer) -> None:
    """Add ``list``, ``promote``, ``rollback`` to the model sub-app and ``compare`` to runs."""

    @model_app.command("list")
    def list_cmd(
        model: str | None = _MODEL_OPT,
        metric: list[str] = typer.Option(
            [], "--metric", "-m", help="Metric columns to show (default: the final metrics)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """List model versions with their aliases, metrics, dataset and S3 path."""
        from components.registry import RegistryError, list_versions

        client, name, _ = _mlflow(model)
        try:
            versions = list_versions(client, name)
        except RegistryError as exc:
            _fail(str(exc))
        if as_json:
            console.print_json(json.dumps(versions))
            return
        columns = (
            list(metric)
            or sorted(
                {k for v in versions for k in v["metrics"] if "/" not in k}  # per-epoch series have a '/'
            )[:5]
        )
        table = Table(title=f"{name}: {len(versions)} version(s)")
        for col in ("version", "aliases", "created (UTC)", "dataset", *columns, "S3 path"):
            table.add_column(col, overflow="fold")
        for v in versions:
            aliases = ", ".join(v["aliases"])
            if "champion" in v["aliases"]:
                aliases = f"[bold green]{aliases}[/bold green]"
            table.add_row(
                v["version"],
                aliases,
                _when(v["created"]),
                (v["dataset_id"] or "")[:12],
                *(_fmt(v["metrics"].get(c)) for c in columns),
                v["s3_uri"] or "",
            )
        console.print(table)

    @model_app.command("register")
    def register_cmd(
        onnx: Path = typer.Option(
            ...,
            "--onnx",
            exists=True,
            dir_okay=False,
            help="An existing ONNX detector, e.g. the original demo's YOLOv5m ([1, 25200, 7] output).",
        ),
        model: str | None = _MODEL_OPT,
        names: str | None = typer.Option(
            None, "--names", help="Class names in id order, comma-separated (default: the ONNX metadata)."
        ),
        imgsz: int | None = typer.Option(None, "--imgsz", help="Input size, for a model with a dynamic input."),
        data: Path | None = typer.Option(
            None,
            "--data",
            exists=True,
            file_okay=False,
            help="Dataset folder: evaluate on its validation split and record the metrics with the version.",
        ),
        gate: bool = typer.Option(
            False, "--gate", help="Apply the quality gate (needs --data): refuse a model that fails it."
        ),
        floors: str | None = typer.Option(
            None, "--floors", help="Gate floors as JSON, e.g. '{\"map50\": 0.5}' (implies --gate)."
        ),
    ) -> None:
        """Register an existing ONNX model (checked, optionally evaluated and gated) as a new version.

        Serve it with `vinspect model promote VERSION --deploy local|kserve`.
        """
        from components.registry import RegistryError
        from components.registry.onnx_import import import_onnx
        from vinspect.settings import S3Settings

        client, name, experiment = _mlflow(model)
        floors_d = None
        if floors:
            try:
                floors_d = json.loads(floors)
            except json.JSONDecodeError as exc:
                _fail(f"--floors is not JSON: {exc}")
            if not isinstance(floors_d, dict):
                _fail("--floors must be a JSON object")
        s3 = S3Settings.from_env()
        try:
            with console.status(f"Checking and registering {onnx.name} as {name}..."):
                info = import_onnx(
                    client,
                    s3.client(),
                    onnx_path=onnx,
                    model_name=name,
                    bucket=s3.bucket,
                    names=[n for n in names.split(",")] if names else None,
                    imgsz=imgsz,
                    data=data,
                    floors=floors_d,
                    gate=gate,
                    experiment=experiment,
                )
        except (RegistryError, FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
        console.print(
            f"registered [green]{info['name']} v{info['version']}[/green] ({info['layout']} layout, output "
            f"{info['output_shape']}, {info['imgsz'][0]}x{info['imgsz'][1]}, classes {', '.join(info['names'])}) "
            f"at {info['storage_uri']}"
        )
        if info["metrics"]:
            console.print(
                f"  mAP50 {info['metrics'].get('map50', 0):.3f}, mAP50-95 {info['metrics'].get('map50_95', 0):.3f}"
            )
        console.print(f"  serve it: vinspect model promote {info['version']} --model {info['name']} --deploy local")

    @model_app.command("promote")
    def promote_cmd(
        version: str = typer.Argument(..., help="MLflow model version to make the champion."),
        model: str | None = _MODEL_OPT,
        deploy: Deploy = _DEPLOY_OPT,
        namespace: str | None = _NS_OPT,
        data_connection: str | None = _DC_OPT,
        mode: Mode = _MODE_OPT,
        service: str | None = _SERVICE_OPT,
        model_url: str | None = _URL_OPT,
        golden: Path | None = _GOLDEN_OPT,
        timeout: float = _TIMEOUT_OPT,
    ) -> None:
        """Make VERSION the champion (optionally deploying and smoke-testing it first)."""
        from components.registry import promote
        from serving.notify import notify

        client, name, _ = _mlflow(model)
        try:
            if deploy is Deploy.none:
                result = promote(client, name, version)
                if result.changed:
                    console.print(f"champion: {result.previous or '-'} -> [green]{version}[/green]")
                    notify("promoted", name, version, previous_version=result.previous, target="registry")
                else:
                    console.print(f"version {version} already is the champion")
                return
            result = _deploy(
                client,
                name,
                version,
                deploy=deploy,
                move_alias=promote,
                namespace=namespace,
                data_connection=data_connection,
                mode=mode,
                service=service,
                model_url=model_url,
                golden=golden,
                timeout_s=timeout,
            )
        except _errors() as exc:
            _fail(str(exc))
        if result.get("status") == "deployed":
            notify("promoted", name, version, previous_version=result.get("previous_version"), target=deploy.value)
        else:
            notify(
                "rolled_back",
                name,
                result.get("previous_version") or "",
                from_version=version,
                reason=str(result.get("reason") or ""),
                target=deploy.value,
            )
        _report_rollout(result)

    @model_app.command("rollback")
    def rollback_cmd(
        model: str | None = _MODEL_OPT,
        deploy: Deploy = _DEPLOY_OPT,
        namespace: str | None = _NS_OPT,
        data_connection: str | None = _DC_OPT,
        mode: Mode = _MODE_OPT,
        service: str | None = _SERVICE_OPT,
        model_url: str | None = _URL_OPT,
        golden: Path | None = _GOLDEN_OPT,
        timeout: float = _TIMEOUT_OPT,
    ) -> None:
        """Point the champion back at the previous champion (optionally redeploying it)."""
        from components.registry import champion_state, rollback
        from serving.notify import notify

        client, name, _ = _mlflow(model)
        try:
            if deploy is Deploy.none:
                result = rollback(client, name)
                console.print(f"champion: {result.rolled_back_from} -> [green]{result.champion}[/green]")
                notify(
                    "rolled_back",
                    name,
                    result.champion,
                    from_version=result.rolled_back_from,
                    reason="vinspect model rollback",
                    target="registry",
                )
                return
            current, history = champion_state(client, name)
            if not history:
                _fail(f"model {name!r}: no previous champion recorded (current: {current})")
            target = history[-1]

            def move_back(c, m, v):
                # Pops the history (a rollback), instead of pushing onto it as promote would;
                # refuses without moving anything if another call changed the history meanwhile.
                return rollback(c, m, expect=v)

            result = _deploy(
                client,
                name,
                target,
                deploy=deploy,
                move_alias=move_back,
                namespace=namespace,
                data_connection=data_connection,
                mode=mode,
                service=service,
                model_url=model_url,
                golden=golden,
                timeout_s=timeout,
            )
        except _errors() as exc:
            _fail(str(exc))
        if result.get("status") == "deployed":
            notify(
                "rolled_back", name, target, from_version=current, reason="vinspect model rollback", target=deploy.value
            )
        _report_rollout(result)

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
        from components.registry import RegistryError, compare_runs, plot_runs

        client, _, default_experiment = _mlflow(None)
        experiment = experiment or default_experiment
        try:
            rows = compare_runs(
                client,
                experiment,
                metric or None,
                sort_by or (metric[0] if metric else None),
                descending=not ascending,
                max_results=limit,
            )
        except RegistryError as exc:
            _fail(str(exc))
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
                    _when(r["start_time"]),
                    r["status"],
                    (r["dataset_id"] or "")[:12],
                    *(r["params"].get(p, "") for p in param),
                    *(_fmt(r["metrics"].get(m)) for m in metric_cols),
                )
            console.print(table)
        if plot is not None:
            wanted = list(metric) or sorted({k for r in rows for k in r["metrics"] if "/" not in k})[:6]
            try:
                out = plot_runs(rows, wanted, plot)
            except RegistryError as exc:
                _fail(str(exc))
            err.print(f"plot written to {out}")
