"""Schedule the training pipeline as a KFP recurring run, data-aware.

KFP cron expressions have six fields, seconds first (``"0 0 3 * * *"`` = every day at 03:00),
unlike the five of Unix cron; a five-field expression is refused with the six-field one it
probably meant. Scheduled runs are data-aware: ``skip_if_unchanged`` is on, so when the pulled
dataset's id equals the champion's the run skips training and says so, and every step runs
uncached, so a CVAT task or S3 export that changed is really pulled again.
"""

import re
import tempfile
from pathlib import Path
from typing import Any

from pipelines.submit import DEFAULT_EXPERIMENT, Submission, SubmitError, _compile, _describe, make_client, upload
from pipelines.training import PIPELINE_NAME, SecretNames
from vinspect.errors import VinspectError

# (name, lowest, highest) of each KFP cron field (robfig/cron with seconds).
_FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
)
_NAMES = {
    "month": ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
    "day of week": ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
}
_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


class CronError(VinspectError, ValueError):
    """A cron expression KFP would not accept; the message shows the fix."""


def _check_value(text: str, name: str, lo: int, hi: int, expr: str) -> None:
    names = _NAMES.get(name, [])
    if text.upper() in names:
        return
    if not text.isdigit():
        raise CronError(f"cron {expr!r}: {name} field has {text!r}, expected a number {lo}-{hi}")
    if not lo <= int(text) <= hi:
        raise CronError(f"cron {expr!r}: {name} {text} is out of range {lo}-{hi}")


def validate_cron(expr: str) -> str:
    """Check a KFP (six-field, seconds first) cron expression.

    Args:
        expr: E.g. ``"0 0 3 * * *"``; ``@daily``-style descriptors and ``@every 1h`` are accepted.

    Returns:
        The expression, whitespace-normalised.

    Raises:
        CronError: Wrong number of fields (a five-field Unix cron gets the six-field one it
            probably meant), or a field out of range.
    """
    expr = " ".join(str(expr).split())
    if expr.startswith("@"):
        if expr in _DESCRIPTORS or re.fullmatch(r"@every \d+(\.\d+)?(ns|us|ms|s|m|h)(\d+(ms|s|m|h))*", expr):
            return expr
        raise CronError(f"cron {expr!r}: unknown descriptor (use one of {', '.join(_DESCRIPTORS)} or '@every 1h')")
    fields = expr.split(" ") if expr else []
    if len(fields) == 5:
        raise CronError(
            f'cron {expr!r} has 5 fields, but KFP cron has 6 with seconds first; for the same schedule use "0 {expr}"'
        )
    if len(fields) != 6:
        raise CronError(
            f"cron {expr!r} has {len(fields)} fields; KFP cron has 6: second minute hour "
            f'day-of-month month day-of-week, e.g. "0 0 3 * * *" (daily at 03:00)'
        )
    for text, (name, lo, hi) in zip(fields, _FIELDS):
        for part in text.split(","):
            base, _, step = part.partition("/")
            if step and not (step.isdigit() and int(step) > 0):
                raise CronError(f"cron {expr!r}: {name} step {step!r} must be a positive number")
            if base in ("*", "?"):
                if base == "?" and name not in ("day of month", "day of week"):
                    raise CronError(f"cron {expr!r}: '?' is only allowed for day of month or day of week")
                continue
            if not base:
                raise CronError(f"cron {expr!r}: empty {name} field part in {text!r}")
            first, _, last = base.partition("-")
            _check_value(first, name, lo, hi, expr)
            if last:
                _check_value(last, name, lo, hi, expr)
    return expr


def schedule(
    cron: str,
    host: str | None = None,
    *,
    arguments: dict[str, Any] | None = None,
    name: str = f"{PIPELINE_NAME}-scheduled",
    experiment: str = DEFAULT_EXPERIMENT,
    token: str | None = None,
    ca_bundle: str | None = None,
    namespace: str | None = None,
    image: str | None = None,
    secrets: SecretNames | None = None,
    gpus: int = 1,
    max_concurrency: int = 1,
    service_account: str | None = None,
    client=None,
) -> Submission:
    """Create a recurring run of the training pipeline.

    Args:
        cron: KFP cron (six fields, seconds first), validated first.
        host: Pipelines API endpoint (``$KFP_HOST``).
        arguments: Pipeline parameters; ``skip_if_unchanged`` is forced on (data-aware).
        name: Recurring run name.
        experiment: Experiment (created when missing).
        token: Bearer token.
        ca_bundle: CA bundle for the endpoint.
        namespace: Pipelines namespace.
        image: Component image.
        secrets: Secret names.
        gpus: Accelerator limit of the train step.
        max_concurrency: Runs of this schedule allowed at once (1: a slow run delays the next).
        service_account: Service account for the runs' pods.
        client: A ready ``kfp.Client`` (tests).

    Returns:
        The :class:`Submission` (with ``recurring_run_id``).

    Raises:
        CronError: Before anything is sent, for a bad cron expression.
        SubmitError: The server refused.
    """
    cron = validate_cron(cron)
    arguments = {**(arguments or {}), "skip_if_unchanged": True}
    client = client or make_client(host, token=token, ca_bundle=ca_bundle, namespace=namespace)
    with tempfile.TemporaryDirectory(prefix="vinspect-schedule-") as tmp:
        package = Path(tmp) / "training_pipeline.yaml"
        # A schedule must pull its source afresh every time (the check step, not the cache,
        # then skips training when the data did not change): every step is compiled uncached.
        from components.kfp import pipeline_image

        _compile(package, image or pipeline_image(namespace), secrets, gpus, caching=False)
        try:
            pipeline_id, version_id = upload(client, package, suffix="-nocache")
            exp = client.create_experiment(experiment, namespace=namespace or None)
            job = client.create_recurring_run(
                experiment_id=exp.experiment_id,
                job_name=name,
                description=f"vinspect training, data-aware, cron {cron}",
                cron_expression=cron,
                max_concurrency=max_concurrency,
                no_catchup=True,
                params=arguments,
                pipeline_id=pipeline_id,
                version_id=version_id,
                service_account=service_account,
            )
        except Exception as exc:  # the KFP SDK raises ApiException, urllib3 and token errors: all SubmitError
            raise SubmitError(_describe(exc, client)) from exc
    return Submission(
        pipeline_id, version_id, exp.experiment_id, recurring_run_id=job.recurring_run_id, arguments=arguments
    )
