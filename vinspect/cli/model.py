"""``vinspect model``: train, export and evaluate a model; list, register, promote and roll back its versions.

Thin over :mod:`components.model` (the step cores, usable outside the pipeline),
:mod:`components.registry` and :mod:`components.rollout`. torch, Ultralytics, ONNX Runtime, mlflow,
kubernetes and httpx are imported inside the command bodies so ``vinspect --help`` stays instant.
A :class:`vinspect.errors.VinspectError` (a registry refusal, a failed rollout, an unreachable
cluster) is reported by the root command group; a command here only catches a built-in error that
it reports with its own exit status.
"""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from vinspect.defaults import EVAL, GATE, TRAIN

if TYPE_CHECKING:  # the CLI imports the rollout only inside commands, so --help stays instant
    from components.rollout.deploy import Rollout

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


def _bad_input(exc: Exception) -> None:
    # Bad input reported by a built-in error (a missing file, a ValueError from a library): exit 2.
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _fail(message: str) -> None:
    # A refusal of this command's own (a missing option, a version without storage): exit 1.
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(1)


def _data_yaml(data: Path) -> Path:
    path = data / "data.yaml" if data.is_dir() else data
    if not path.is_file():
        raise typer.BadParameter(f"{data} is neither a dataset folder with data.yaml nor a data.yaml file")
    return path


def _json_arg(value: Optional[str], what: str) -> Optional[dict]:
    """A JSON object given inline or as a path to a .json file."""
    if not value:
        return None
    text = Path(value).read_text() if Path(value).is_file() else value
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{what} must be a JSON object or a .json file: {exc}") from exc
    if not isinstance(obj, dict):
        raise typer.BadParameter(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _champion(given: Optional[dict], model_name: Optional[str], data: Path, **measure):
    """The champion for the gate: figures given on the command line, or the registry's, measured on ``data``."""
    if given is not None:
        from components.model.champion import GIVEN, ChampionMetrics

        return ChampionMetrics("", str(given.get("eval_dataset_id") or ""), GIVEN, given) if given else None
    if model_name is None:
        return None
    from functools import partial

    from components.model.champion import champion_metrics_on
    from vinspect.settings import MLflowSettings, S3Settings

    return partial(
        champion_metrics_on,
        data,
        mlflow_client=MLflowSettings.from_env().client(),
        s3_client=S3Settings.from_env().client(),
        model_name=model_name,
        **measure,
    )


def _metrics_table(metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(v) -> str:
        return "-" if v is None else f"{v:.4f}"

    table = Table(title=f"{metrics['split']}: {metrics['images']} images, {metrics['instances']} instances")
    for col in ("class", "support", "mAP50", "mAP50-95", "precision", "recall"):
        table.add_column(col, justify="left" if col == "class" else "right")
    table.add_row(
        "all",
        str(metrics["instances"]),
        fmt(metrics["map50"]),
        fmt(metrics["map50_95"]),
        fmt(metrics["precision"]),
        fmt(metrics["recall"]),
    )
    for name, m in metrics["per_class"].items():
        table.add_row(
            name, str(m["support"]), fmt(m["map50"]), fmt(m["map50_95"]), fmt(m["precision"]), fmt(m["recall"])
        )
    Console(stderr=True).print(table)


def mlflow_context(model: str | None) -> tuple[Any, str, str]:
    """The MLflow client, the model name (``model`` or the settings') and the experiment, from the environment.

    Also used by ``vinspect runs`` (:mod:`vinspect.cli.runs`).
    """
    from vinspect.settings import MLflowSettings

    settings = MLflowSettings.from_env()
    client = settings.client()  # SettingsError (no MLFLOW_TRACKING_URI): reported by the CLI, exit 1
    return client, model or settings.model_name, settings.experiment


def fmt_time(ms: int) -> str:
    """An MLflow timestamp (ms since the epoch) as ``YYYY-MM-DD HH:MM`` UTC, for tables."""
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ms / 1000)) if ms else ""


def fmt_value(value: Any) -> str:
    """A metric or parameter for a table cell: floats to 4 significant digits, ``None`` empty."""
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
) -> Rollout:
    """Run the local or KServe rollout of ``version``; the alias moves through ``move_alias``."""
    from components.registry import version_info
    from components.rollout import load_golden
    from components.rollout.deploy import deploy as deploy_version

    if deploy is Deploy.kserve and (not namespace or not data_connection):
        _fail("--deploy kserve needs --namespace and --data-connection")
    info = version_info(mlflow_client, model_name, version)
    if not info["storage_uri"]:
        _fail(f"model {model_name} version {version} has no storage URI tag; was it registered by vinspect?")
    with console.status(f"Rolling out {model_name} v{version} ({deploy.value})..."):
        # A KubeError (no kubeconfig, or the cluster refused to be read) is reported by the root group.
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
    return result


def _report_rollout(result: Rollout) -> None:
    if result.status == "deployed":
        console.print(f"[green]deployed[/green] v{result.version} ({result.url or ''})")
        return
    err.print(f"[red]rolled back:[/red] {result.reason}")
    if result.restore:
        err.print(f"  {result.restore}")
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


def register(app: typer.Typer) -> None:
    """Add the ``vinspect model`` verbs: train, export, evaluate, then list, register, promote, rollback."""
    _register_build(app)
    _register_versions(app)


def _register_build(app: typer.Typer) -> None:
    """Add ``train``, ``export`` and ``evaluate``: the model step cores."""

    @app.command("train")
    def train(
        data: Path = typer.Argument(..., help="Dataset folder (with data.yaml) or a data.yaml"),
        out: Path = typer.Option(Path("runs"), "--out", help="Run folder; the trainer writes OUT/train[N]/"),
        model: str = typer.Option(TRAIN.model, "--model", help="Model definition (YAML, built offline)"),
        weights: Optional[str] = typer.Option(None, "--weights", help="Initial weights: local .pt or s3://bucket/key"),
        epochs: int = typer.Option(TRAIN.epochs, "--epochs", min=1),
        imgsz: int = typer.Option(TRAIN.imgsz, "--imgsz", help="Input size, a multiple of 32"),
        batch: int = typer.Option(TRAIN.batch, "--batch", min=1),
        lr0: float = typer.Option(TRAIN.lr0, "--lr0", help="Initial learning rate (ignored with --optimizer auto)"),
        optimizer: str = typer.Option(
            TRAIN.optimizer, "--optimizer", help="SGD, AdamW, ... or auto (Ultralytics chooses)"
        ),
        patience: int = typer.Option(TRAIN.patience, "--patience"),
        seed: int = typer.Option(TRAIN.seed, "--seed"),
        device: Optional[str] = typer.Option(None, "--device", help="cpu, 0, 0,1 ... (default: GPU if present)"),
        workers: int = typer.Option(0, "--workers"),
        as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON"),
    ) -> None:
        """Train a YOLO detector with Ultralytics (offline; GPU when there is one)."""
        from tqdm import tqdm

        from components.model import train_model

        data_yaml = _data_yaml(data)
        s3_client = None
        if weights and weights.startswith("s3://"):
            from vinspect.settings import S3Settings

            s3_client = S3Settings.from_env().client()
        bar = tqdm(total=epochs, desc="epochs", unit="epoch")

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            result = train_model(
                data_yaml,
                out,
                model=model,
                weights=weights,
                epochs=epochs,
                imgsz=imgsz,
                batch=batch,
                lr0=lr0,
                optimizer=optimizer,
                patience=patience,
                seed=seed,
                device=device,
                workers=workers,
                s3_client=s3_client,
                progress=progress,
            )
        except (FileNotFoundError, ValueError) as exc:
            _bad_input(exc)
        finally:
            bar.close()
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2))
            return
        typer.echo(f"best weights: {result.best_weights}")
        typer.echo(f"run folder:   {result.save_dir}")
        typer.echo(f"device:       {result.device}")
        if result.final_metrics:
            typer.echo("final val:    " + ", ".join(f"{k} {v:.4f}" for k, v in result.final_metrics.items()))

    @app.command("export")
    def export(
        weights: Path = typer.Argument(..., help="Trained weights (best.pt)"),
        out: Path = typer.Option(Path("model.onnx"), "--out", help="ONNX file to write"),
        imgsz: int = typer.Option(TRAIN.imgsz, "--imgsz", help="Input size the model was trained at"),
        opset: int = typer.Option(17, "--opset", help="ONNX opset (17: read by every OVMS release in OpenShift AI)"),
        dynamic: bool = typer.Option(False, "--dynamic", help="Dynamic batch/height/width axes"),
        dataset_id: str = typer.Option("", "--dataset-id", help="Dataset id for the metadata"),
        names: str = typer.Option("scratch,bent", "--names", help="Class names in id order"),
        parity: Optional[Path] = typer.Option(
            None, "--parity", help="Dataset folder (its val images) or image folder for the PyTorch/ONNX parity check"
        ),
        atol: float = typer.Option(1e-2, "--atol", help="Parity tolerance on raw outputs"),
        variants: Optional[Path] = typer.Option(
            None,
            "--variants",
            help="Also write the precision variants (OpenVINO IR fp32, auto, NNCF int8) "
            "in the OVMS layout to this new folder; needs --calibration",
        ),
        calibration: Optional[Path] = typer.Option(
            None, "--calibration", help="Dataset folder (its train images) or image folder for INT8 calibration"
        ),
        calibration_images: int = typer.Option(300, "--calibration-images", help="Calibration images used, at most"),
    ) -> None:
        """Export weights to ONNX for OpenVINO Model Server, optionally checking parity with PyTorch
        (ONNX Runtime and OpenVINO) and writing the precision variants."""
        from components.model import export_onnx, parity_check
        from components.model.evaluate import IMAGE_SUFFIXES

        name_list = [n.strip() for n in names.split(",") if n.strip()]
        try:
            path = export_onnx(
                weights, out, imgsz=imgsz, opset=opset, dynamic=dynamic, dataset_id=dataset_id, names=name_list
            )
        except (FileNotFoundError, ValueError) as exc:
            _bad_input(exc)
        typer.echo(f"exported: {path}")
        if variants is not None:
            from components.model import export_variants

            if calibration is None:
                _bad_input(ValueError("--variants needs --calibration (the training images)"))
            folder = calibration / "images" / "train" if (calibration / "images" / "train").is_dir() else calibration
            cal = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
            try:
                index = export_variants(path, variants, calibration=cal, calibration_images=calibration_images)
            except (FileNotFoundError, ValueError) as exc:
                _bad_input(exc)
            typer.echo(f"variants: {', '.join(index)} in {variants}")
        if parity is None:
            return
        folder = parity / "images" / "val" if (parity / "images" / "val").is_dir() else parity
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        if not images:
            _bad_input(FileNotFoundError(f"no images for the parity check in {folder}"))
        report = parity_check(weights, path, images, imgsz=imgsz, atol=atol)  # ParityError: exit 1
        typer.echo(
            f"parity: ok on {report['images']} images, max |torch - onnx| = {report['max_abs_diff']:.3g} "
            f"(atol {atol:g}), detections {report['detections_torch']}/{report['detections_onnx']} matched "
            f"{report['matched']}"
            + (
                f"; max |torch - openvino f32| = {report['max_abs_diff_openvino']:.3g}, openvino "
                f"{report['openvino_auto_precision']} {report['max_abs_diff_openvino_auto']:.3g}"
                if "max_abs_diff_openvino" in report
                else ""
            )
        )

    @app.command("evaluate")
    def evaluate(
        model: Path = typer.Argument(..., help="ONNX model or OpenVINO IR (.xml)"),
        data: Path = typer.Argument(..., help="Dataset folder"),
        engine: Optional[str] = typer.Option(
            None, "--engine", help="openvino (default where installed, as served) or onnxruntime [VINSPECT_ENGINE]"
        ),
        precision: Optional[str] = typer.Option(
            None,
            "--precision",
            help="OpenVINO precision: f32, bf16, auto (default: the model's declared, "
            "else the runtime's) [VINSPECT_PRECISION]",
        ),
        split: str = typer.Option(EVAL.split, "--split"),
        out: Optional[Path] = typer.Option(
            None, "--out", help="Folder for metrics.json, PR curve and confusion matrix"
        ),
        conf: float = typer.Option(EVAL.conf, "--conf", help="Confidence threshold for mAP"),
        iou: float = typer.Option(EVAL.iou, "--iou", help="NMS IoU threshold"),
        floors: Optional[str] = typer.Option(
            None, "--floors", help='Gate floors, JSON or file, e.g. \'{"map50": 0.5, "per_class_map50": 0.3}\''
        ),
        champion: Optional[str] = typer.Option(
            None, "--champion", help="Champion metrics (JSON or file) on the same data"
        ),
        model_name: Optional[str] = typer.Option(
            None,
            "--model-name",
            help="Registered model whose champion is measured on the same data, as the pipeline's gate does "
            "(its recorded figures when measured on this dataset, else its ONNX re-evaluated; MLflow and S3 "
            "from the environment)",
        ),
        allow_missing_champion: bool = typer.Option(
            GATE.allow_missing_champion,
            "--allow-missing-champion",
            help="With --model-name: gate on the floors only when the champion cannot be measured",
        ),
        max_regression: float = typer.Option(
            GATE.max_regression, "--max-regression", help="Allowed drop below the champion"
        ),
        strict: bool = typer.Option(False, "--strict", help="Exit with status 1 when the gate rejects the model"),
        as_json: bool = typer.Option(False, "--json", help="Print metrics (and gate decision) as JSON on stdout"),
    ) -> None:
        """Evaluate a model through the detector core with its serving engine, and apply the quality gate.

        The gate is the pipeline's (``components.model.gate_model``): the floors (default: the
        pipeline's), and non-regression against the champion measured on this data.
        """
        from tqdm import tqdm

        from components.model import EvalMetrics, evaluate_onnx, gate_model

        if champion is not None and model_name is not None:
            raise typer.BadParameter("give --champion (figures) or --model-name (from the registry), not both")
        floors_d = _json_arg(floors, "--floors")
        champion_d = _json_arg(champion, "--champion")
        bar = tqdm(desc="evaluate", unit="img")

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        try:
            metrics = evaluate_onnx(
                model,
                data,
                split=split,
                out_dir=out,
                conf=conf,
                iou=iou,
                progress=progress,
                engine=engine,
                precision=precision,
            )
        except (FileNotFoundError, ValueError) as exc:
            _bad_input(exc)
        finally:
            bar.close()
        decision = None
        if floors_d is not None or champion_d is not None or model_name is not None:
            decision = gate_model(
                EvalMetrics.from_dict(metrics),
                floors=floors_d,
                champion=_champion(champion_d, model_name, data, split=split, conf=conf, iou=iou),
                max_regression=max_regression,
                allow_missing_champion=allow_missing_champion,
            ).decision
        if out is not None:
            payload = dict(metrics, gate=decision.to_dict() if decision else None)
            (out / "metrics.json").write_text(json.dumps(payload, indent=2))
        if as_json:
            typer.echo(json.dumps(dict(metrics, gate=decision.to_dict() if decision else None), indent=2))
        else:
            _metrics_table(metrics)
            for plot in metrics["plots"]:
                typer.echo(f"plot: {plot}")
        if decision is not None:
            verdict = "PASSED" if decision.passed else "REJECTED"
            typer.secho(f"gate: {verdict}", fg=typer.colors.GREEN if decision.passed else typer.colors.RED, err=True)
            for reason in decision.reasons:
                typer.echo(f"  - {reason}", err=True)
            if strict and not decision.passed:
                raise typer.Exit(code=1)


def _register_versions(model_app: typer.Typer) -> None:
    """Add ``list``, ``register``, ``promote`` and ``rollback``: the registered versions and the champion."""

    @model_app.command("list")
    def list_cmd(
        model: str | None = _MODEL_OPT,
        metric: list[str] = typer.Option(
            [], "--metric", "-m", help="Metric columns to show (default: the final metrics)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """List model versions with their aliases, metrics, dataset and S3 path."""
        from components.registry import list_versions

        client, name, _ = mlflow_context(model)
        versions = list_versions(client, name)
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
                fmt_time(v["created"]),
                (v["dataset_id"] or "")[:12],
                *(fmt_value(v["metrics"].get(c)) for c in columns),
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
        from components.registry.onnx_import import import_onnx
        from vinspect.settings import S3Settings

        client, name, experiment = mlflow_context(model)
        floors_d = None
        if floors:
            try:
                floors_d = json.loads(floors)
            except json.JSONDecodeError as exc:
                _fail(f"--floors is not JSON: {exc}")
            if not isinstance(floors_d, dict):
                _fail("--floors must be a JSON object")
        s3 = S3Settings.from_env()
        try:  # a RegistryError (a VinspectError, exit 1) is reported by the root group
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
        except (FileNotFoundError, ValueError) as exc:
            # A missing file or an ONNX / dataset / gate input this command refuses: reported with exit 1,
            # as every refusal of `register` is (a DatasetError or GateError would otherwise exit 2).
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

        client, name, _ = mlflow_context(model)
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
        if result.status == "deployed":
            notify("promoted", name, version, previous_version=result.previous_version, target=deploy.value)
        else:
            notify(
                "rolled_back",
                name,
                result.previous_version or "",
                from_version=version,
                reason=str(result.reason or ""),
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

        client, name, _ = mlflow_context(model)
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
        if result.status == "deployed":
            notify(
                "rolled_back", name, target, from_version=current, reason="vinspect model rollback", target=deploy.value
            )
        _report_rollout(result)
