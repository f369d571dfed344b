"""The demo: every part of vinspect on one machine, through the same code paths as on a cluster.

1. the local stack (S3, MLflow, Kafka) comes up;
2. a dataset: synthetic metal nuts rendered as a CVAT "YOLO 1.1" export, or ``--data``;
3. the local model server starts (empty, like OVMS waiting for its first model);
4. ``training_pipeline`` runs through ``kfp.local``: import, QA and split, train, export, evaluate
   and gate, and when the gate passes, register in MLflow + S3 and roll out to the model server;
5. the runtime: image processor (Kafka loop), dashboard, and a camera streaming the dataset's images.

Every process is started through :func:`vinspect.local.start_service`, so ``vinspect local down``
stops all of it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from vinspect.local import StackConfig, start_service, up

_PORTS = {"model-server": 8080, "processor": 8081, "dashboard": 8088}


def _port(name: str) -> int:
    env = f"VINSPECT_LOCAL_{name.replace('-', '_').upper()}_PORT"
    return int(os.environ.get(env, _PORTS[name]))


def _get(url: str) -> None:
    import requests

    requests.get(url, timeout=2).raise_for_status()


def _say(message: str) -> None:
    typer.secho(f"==> {message}", fg="cyan", err=True)


def _vinspect(*args: str) -> list[str]:
    return [sys.executable, "-m", "vinspect", *args]


def run_demo(
    *,
    data: str | None,
    images: int,
    epochs: int,
    imgsz: int,
    seed: int,
    runtime: bool,
    state: Path | None,
    min_map50: float | None = None,
    min_class_map50: float | None = None,
    smoke_min_classes: int | None = None,
) -> int:
    """Run the demo; returns the process exit code.

    Raises:
        StackError: A service would not start (the CLI prints it and exits 1).
    """
    from vinspect.cli.local import print_status
    from vinspect.settings import MLflowSettings

    cfg = StackConfig.from_env(state=state)
    os.environ["VINSPECT_HOME"] = str(cfg.state)
    _say("local stack")
    env = up(cfg, log=lambda m: typer.echo(m, err=True))  # StackError: reported by the CLI (exit 1)
    if not env.get("VINSPECT_MODEL_TOKEN"):
        # The model server's repository API (the rollout's load) needs a bearer token. A stack
        # that generates one keeps it in stack.env; otherwise this demo makes one for the model
        # server, the pipeline's rollout and the processor it starts (never printed).
        import secrets

        env["VINSPECT_MODEL_TOKEN"] = os.environ.get("VINSPECT_MODEL_TOKEN") or secrets.token_urlsafe(32)
    os.environ.update(env)
    if not print_status(cfg):
        return 1
    model_name = MLflowSettings.from_env().model_name

    if data is None:
        from components.data import synthesize

        export = cfg.state / "demo" / f"synthetic-{images}-{seed}"
        if not (export / "obj.names").is_file():
            _say(f"rendering {images} synthetic metal nuts (CVAT 'YOLO 1.1' export) into {export}")
            synthesize(export, images, seed=seed, size=256, progress=True)
        data = str(export)

    ports = {name: _port(name) for name in _PORTS}
    model_url = f"http://127.0.0.1:{ports['model-server']}"
    _say(f"model server on {model_url}")
    start_service(
        cfg,
        "model-server",
        _vinspect(
            "serve",
            "model",
            "--host",
            "127.0.0.1",
            "--port",
            str(ports["model-server"]),
            "--name",
            model_name,
            "--champion-if-any",
            "--no-spin",
        ),
        ready=lambda: _get(f"{model_url}/v2/health/live"),
        port=ports["model-server"],
    )

    from pipelines.local import LocalRunError, run_local

    _say(f"training pipeline through kfp.local on {data} (epochs={epochs}, imgsz={imgsz})")
    arguments = {"epochs": epochs, "imgsz": imgsz, "seed": seed}
    if min_map50 is not None:
        arguments["min_map50"] = min_map50
    if min_class_map50 is not None:
        arguments["min_class_map50"] = min_class_map50
    if smoke_min_classes is not None:
        arguments["smoke_min_classes"] = smoke_min_classes
    try:
        result = run_local(data, arguments=arguments, env=env, model_url=model_url)
    except LocalRunError as exc:
        typer.secho(f"pipeline failed: {exc}", fg="red", err=True)
        return 1
    colour = "green" if result.outcome in ("deployed", "unchanged", "skipped") else "yellow"
    typer.secho(f"pipeline outcome: {result.outcome}: {result.detail} ({result.wall_s:.0f}s)", fg=colour, err=True)

    urls = {
        "MLflow UI": env["MLFLOW_TRACKING_URI"],
        "model server (KServe v2)": f"{model_url}/v2/models/{model_name}",
    }
    if runtime:
        processor_health = f"http://127.0.0.1:{ports['processor']}"
        dashboard = f"http://127.0.0.1:{ports['dashboard']}"
        _say("image processor (Kafka loop)")
        start_service(
            cfg,
            "processor",
            _vinspect(
                "serve", "processor", "--mode", "kafka", "--host", "127.0.0.1", "--port", str(ports["processor"])
            ),
            ready=lambda: _get(f"{processor_health}/healthz"),
            env={"VINSPECT_MODEL_URL": model_url, "VINSPECT_MODEL_NAME": model_name},
            port=ports["processor"],
        )
        _say("dashboard")
        start_service(
            cfg,
            "dashboard",
            _vinspect("serve", "dashboard", "--host", "127.0.0.1", "--port", str(ports["dashboard"])),
            ready=lambda: _get(f"{dashboard}/"),
            port=ports["dashboard"],
        )
        _say("camera (streams the dataset's images, two cameras, 1 frame/s each)")
        start_service(
            cfg,
            "camera",
            _vinspect(
                "serve",
                "camera",
                data if Path(data).exists() else "synthetic",
                "--cameras",
                "2",
                "--fps",
                "1",
                "--loop",
                "--shuffle",
            ),
            ready=lambda: None,
        )
        urls["dashboard"] = dashboard
        urls["processor metrics"] = f"{processor_health}/metrics"

    typer.echo("")
    typer.secho("vinspect demo is up. Where to look:", bold=True)
    for label, url in urls.items():
        typer.echo(f"  {label:26s} {url}")
    typer.echo(f"  {'logs':26s} {cfg.log_dir}")
    typer.echo("Stop everything with `vinspect local down` (or `make down`).")
    return 0 if result.outcome != "failed" else 1
