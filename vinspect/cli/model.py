"""``vinspect model train|export|evaluate``: the model step cores, usable outside the pipeline.

Thin over :mod:`components.model`; torch, Ultralytics and ONNX Runtime are imported inside the
command bodies so ``vinspect --help`` stays instant. (``list``/``promote``/``rollback`` live in
``vinspect/cli/registry.py``.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from vinspect.defaults import EVAL, GATE, TRAIN


def _fail(exc: Exception) -> None:
    # Bad input reported by a built-in error (a missing file, a ValueError from a library): exit 2.
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


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


def register(app: typer.Typer) -> None:
    """Add ``train``, ``export`` and ``evaluate`` to the ``vinspect model`` sub-app."""

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
            _fail(exc)
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
            _fail(exc)
        typer.echo(f"exported: {path}")
        if variants is not None:
            from components.model import export_variants

            if calibration is None:
                _fail(ValueError("--variants needs --calibration (the training images)"))
            folder = calibration / "images" / "train" if (calibration / "images" / "train").is_dir() else calibration
            cal = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
            try:
                index = export_variants(path, variants, calibration=cal, calibration_images=calibration_images)
            except (FileNotFoundError, ValueError) as exc:
                _fail(exc)
            typer.echo(f"variants: {', '.join(index)} in {variants}")
        if parity is None:
            return
        folder = parity / "images" / "val" if (parity / "images" / "val").is_dir() else parity
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        if not images:
            _fail(FileNotFoundError(f"no images for the parity check in {folder}"))
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
            _fail(exc)
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
