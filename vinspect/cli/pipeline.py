"""`vinspect pipeline compile|params|run --local|submit|schedule`: the Kubeflow training pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

_IMAGE = typer.Option(
    None,
    "--image",
    help="Component image (default $VINSPECT_IMAGE, else the image `vinspect infra bootstrap` builds in the "
    "pipelines project: image-registry.openshift-image-registry.svc:5000/<namespace>/vinspect-pipeline:latest).",
)
_GPUS = typer.Option(1, "--gpus", min=0, help="GPUs for the train step (0: CPU-only train step).")
_PARAM = typer.Option(
    None, "--param", "-p", help="Pipeline parameter as key=value (repeatable; see `vinspect pipeline params`)."
)
_DATA = typer.Option(None, "--data", help="CVAT export: folder, .zip or s3:// URI.")
_S3_SECRET = typer.Option("aws-connection-models", "--s3-secret", help="Name of the S3 data-connection Secret.")
_MLFLOW_SECRET = typer.Option(
    "vinspect-mlflow", "--mlflow-secret", help="Name of the MLflow credentials Secret (optional at run time)."
)
_CVAT_SECRET = typer.Option("cvat-admin", "--cvat-secret", help="Name of the CVAT Secret (optional at run time).")
_CONFIG_MAP = typer.Option(
    "vinspect-runtime", "--config-map", help="ConfigMap with MLFLOW_TRACKING_URI (an endpoint, not a secret)."
)
_HOST = typer.Option(None, "--host", help="Pipelines API URL, e.g. the DSPA route (default $KFP_HOST).")
_CA = typer.Option(None, "--ca-bundle", help="CA bundle for the API's certificate (default $KFP_CA_BUNDLE).")
_NS = typer.Option(None, "--namespace", help="Pipelines namespace (default $KFP_NAMESPACE).")
_EXPERIMENT = typer.Option("vinspect", "--experiment", help="Experiment to run in (created when missing).")
_SA = typer.Option(None, "--service-account", help="Service account for the run's pods.")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(1)


def _arguments(params: list[str] | None, **options) -> dict:
    """`--param` pairs plus the dedicated options that were given (dedicated options win)."""
    from pipelines.params import parse_params

    args = parse_params(params or [])
    args.update({k: v for k, v in options.items() if v is not None})
    return args


def _secrets(s3: str, mlflow: str, cvat: str, config: str):
    from pipelines.training import SecretNames

    return SecretNames(s3=s3, mlflow=mlflow, cvat=cvat, config=config)


def register(app: typer.Typer) -> None:
    """Add the pipeline commands to ``app``."""

    @app.command("compile")
    def compile_cmd(
        out: Path = typer.Option(..., "--out", "-o", help="Output IR YAML file."),
        image: Optional[str] = _IMAGE,
        gpus: int = _GPUS,
        s3_secret: str = _S3_SECRET,
        mlflow_secret: str = _MLFLOW_SECRET,
        cvat_secret: str = _CVAT_SECRET,
        config_map: str = _CONFIG_MAP,
        namespace: Optional[str] = _NS,
    ) -> None:
        """Compile the training pipeline to KFP IR YAML (upload it in the OpenShift AI console or with `submit`)."""
        from pipelines.compile import compile_pipeline

        path = compile_pipeline(
            out,
            image=image,
            secrets=_secrets(s3_secret, mlflow_secret, cvat_secret, config_map),
            gpus=gpus,
            namespace=namespace,
        )
        typer.echo(f"wrote {path}")

    @app.command("params")
    def params_cmd() -> None:
        """List the pipeline's parameters with their types and defaults."""
        from rich.console import Console
        from rich.table import Table

        from pipelines.params import pipeline_parameters

        table = Table(title="training_pipeline parameters")
        for col in ("name", "type", "default"):
            table.add_column(col)
        for name, p in pipeline_parameters().items():
            table.add_row(name, p["type"].__name__, json.dumps(p["default"]))
        Console().print(table)

    @app.command("run")
    def run_cmd(
        local_: bool = typer.Option(False, "--local", help="Run on this machine through kfp.local (required)."),
        data: Optional[str] = _DATA,
        epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Training epochs."),
        imgsz: Optional[int] = typer.Option(None, "--imgsz", min=32, help="Input size (multiple of 32)."),
        batch: Optional[int] = typer.Option(None, "--batch", min=1, help="Batch size."),
        model: Optional[str] = typer.Option(None, "--model", help="Model YAML, e.g. yolo11n.yaml."),
        min_map50: Optional[float] = typer.Option(None, "--min-map50", help="Gate floor on mAP50."),
        min_class_map50: Optional[float] = typer.Option(None, "--min-class-map50", help="Gate floor per class."),
        skip_if_unchanged: bool = typer.Option(
            False, "--skip-if-unchanged", help="Skip training when the dataset is the champion's."
        ),
        params: Optional[list[str]] = _PARAM,
        model_url: Optional[str] = typer.Option(
            None, "--model-url", help="Local model server v2 URL (default $VINSPECT_MODEL_URL)."
        ),
        synth_images: int = typer.Option(24, "--synth-images", min=4, help="Synthetic images when no --data."),
        no_cache: bool = typer.Option(False, "--no-cache", help="Run every step, ignoring cached outputs."),
        pipeline_root: Optional[Path] = typer.Option(None, "--pipeline-root", help="Where outputs go."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Run the whole pipeline locally (kfp.local) against the local stack: train, gate, register, roll out."""
        if not local_:
            _fail("only local runs happen here: add --local, or use `vinspect pipeline submit --host URL`")
        from pipelines.local import run_local

        args = _arguments(
            params,
            epochs=epochs,
            imgsz=imgsz,
            batch=batch,
            model_yaml=model,
            min_map50=min_map50,
            min_class_map50=min_class_map50,
            skip_if_unchanged=True if skip_if_unchanged else None,
        )
        from rich.console import Console

        console = Console(stderr=True)
        with console.status("running the training pipeline locally (step logs follow)..."):
            result = run_local(
                data,
                arguments=args,
                model_url=model_url,
                pipeline_root=pipeline_root,
                enable_caching=not no_cache,
                synth_images=synth_images,
            )
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2, default=str))
            return
        from rich.table import Table

        table = Table(title="steps")
        for col in ("step", "seconds", "cached"):
            table.add_column(col)
        for step in result.steps:
            seconds = "-" if step["seconds"] is None else f"{step['seconds']:.1f}"
            table.add_row(step["task"], seconds, "yes" if step["cached"] else "")
        Console().print(table)
        colour = {"deployed": "green", "rejected": "yellow", "skipped": "cyan", "unchanged": "cyan"}.get(
            result.outcome, "red"
        )
        label = {
            "deployed": "deployed",
            "rejected": "not deployed: the quality gate rejected the model",
            "skipped": "training skipped",
            "unchanged": "nothing new",
        }.get(result.outcome, result.outcome)
        typer.secho(f"{label}: {result.detail}", fg=colour)
        typer.echo(f"finished in {result.wall_s:.1f} s; outputs under {result.pipeline_root}")

    @app.command("submit")
    def submit_cmd(
        host: Optional[str] = _HOST,
        data: Optional[str] = _DATA,
        params: Optional[list[str]] = _PARAM,
        experiment: str = _EXPERIMENT,
        run_name: Optional[str] = typer.Option(None, "--run-name", help="Run display name."),
        ca_bundle: Optional[str] = _CA,
        namespace: Optional[str] = _NS,
        image: Optional[str] = _IMAGE,
        gpus: int = _GPUS,
        no_cache: bool = typer.Option(
            False,
            "--no-cache",
            help="Run every step. Without it the pull is keyed on the data's version (S3 ETags, or CVAT's "
            "modification dates, read from here; else every step runs and a note says why).",
        ),
        service_account: Optional[str] = _SA,
        s3_secret: str = _S3_SECRET,
        mlflow_secret: str = _MLFLOW_SECRET,
        cvat_secret: str = _CVAT_SECRET,
        config_map: str = _CONFIG_MAP,
    ) -> None:
        """Compile, upload and start a run on Kubeflow / OpenShift AI pipelines (token: $KFP_TOKEN or kubeconfig)."""
        from pipelines.submit import submit

        args = _arguments(params, data_source=data)
        if data and not data.startswith("s3://"):
            _fail(
                f"--data {data}: a cluster run reads its data from S3 or CVAT; upload it (`vinspect data import "
                "... --upload`) and pass the s3:// URI"
            )
        sub = submit(
            host,
            arguments=args,
            experiment=experiment,
            run_name=run_name,
            ca_bundle=ca_bundle,
            namespace=namespace,
            image=image,
            secrets=_secrets(s3_secret, mlflow_secret, cvat_secret, config_map),
            gpus=gpus,
            enable_caching=not no_cache,
            service_account=service_account,
        )
        for note in sub.notes:
            typer.secho(f"note: {note}", fg="yellow", err=True)
        typer.echo(json.dumps(sub.to_dict(), indent=2, default=str))

    @app.command("schedule")
    def schedule_cmd(
        cron: str = typer.Option(..., "--cron", help='KFP cron, 6 fields with seconds first: "0 0 3 * * *".'),
        host: Optional[str] = _HOST,
        data: Optional[str] = _DATA,
        params: Optional[list[str]] = _PARAM,
        name: str = typer.Option("vinspect-training-scheduled", "--name", help="Recurring run name."),
        experiment: str = _EXPERIMENT,
        ca_bundle: Optional[str] = _CA,
        namespace: Optional[str] = _NS,
        image: Optional[str] = _IMAGE,
        gpus: int = _GPUS,
        service_account: Optional[str] = _SA,
        s3_secret: str = _S3_SECRET,
        mlflow_secret: str = _MLFLOW_SECRET,
        cvat_secret: str = _CVAT_SECRET,
        config_map: str = _CONFIG_MAP,
    ) -> None:
        """Schedule data-aware recurring runs: training is skipped while the dataset is the champion's."""
        from pipelines.schedule import schedule, validate_cron

        validate_cron(cron)
        args = _arguments(params, data_source=data)
        sub = schedule(
            cron,
            host,
            arguments=args,
            name=name,
            experiment=experiment,
            ca_bundle=ca_bundle,
            namespace=namespace,
            image=image,
            secrets=_secrets(s3_secret, mlflow_secret, cvat_secret, config_map),
            gpus=gpus,
            service_account=service_account,
        )
        typer.echo(json.dumps(sub.to_dict(), indent=2, default=str))
