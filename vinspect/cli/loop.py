"""Registers the feedback-loop verbs: ``vinspect cvat ...`` and ``vinspect review ...``."""

from __future__ import annotations

import typer


def register(cvat_app: typer.Typer, review_app: typer.Typer, retrain_app: typer.Typer) -> None:
    """Add ``vinspect cvat setup``, ``vinspect review push|status`` and ``vinspect retrain serve``."""
    from vinspect.cli.cvat import register_cvat
    from vinspect.cli.review import register_review

    register_cvat(cvat_app)
    register_review(review_app)
    register_retrain(retrain_app)


def register_retrain(app: typer.Typer) -> None:
    """Add ``vinspect retrain serve``."""

    @app.command("serve")
    def serve_cmd(
        port: int = typer.Option(8080, "--port", help="Port of the CloudEvents receiver"),
        host: str = typer.Option("0.0.0.0", "--host", help="Address to bind"),
        args: str = typer.Option(
            "{}",
            "--args",
            envvar="VINSPECT_RETRAIN_ARGS",
            help='Pipeline arguments of each run, JSON (e.g. {"cvat_project_id": 1})',
        ),
        cooldown: float = typer.Option(21600.0, "--cooldown", help="Least seconds between two runs"),
        min_psi: float = typer.Option(0.2, "--min-psi", help="Lowest PSI that starts a run"),
        gpus: int = typer.Option(1, "--gpus", help="Accelerator limit of the train step"),
    ) -> None:
        """Receive io.vinspect.model.drift.detected events and submit a data-aware training run (KFP_HOST)."""
        import json
        import signal
        import threading

        from pipelines.params import pipeline_parameters
        from pipelines.submit import submit
        from vinspect.retrain import RetrainOnDrift, serve
        from vinspect.settings import KFPSettings

        try:
            arguments = json.loads(args)
            if not isinstance(arguments, dict):
                raise ValueError("not a JSON object")
            unknown = sorted(set(arguments) - set(pipeline_parameters()))
            if unknown:
                raise ValueError(f"unknown pipeline parameter(s) {unknown} (see `vinspect pipeline params`)")
        except ValueError as e:
            raise typer.BadParameter(f"--args / VINSPECT_RETRAIN_ARGS: {e}") from None
        settings = KFPSettings.from_env()

        def start(run_args: dict) -> str:
            return (
                submit(
                    settings.host,
                    arguments=run_args,
                    ca_bundle=settings.ca_bundle,
                    namespace=settings.namespace,
                    gpus=gpus,
                ).run_id
                or ""
            )

        server = serve(RetrainOnDrift(start, arguments, cooldown_s=cooldown, min_psi=min_psi), port, host)
        typer.echo(f"retrain-on-drift listening on {host}:{server.server_address[1]}")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        server.shutdown()
