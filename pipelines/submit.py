"""Submit the training pipeline to Kubeflow Pipelines / OpenShift AI Data Science Pipelines.

``submit`` compiles the pipeline, uploads it (a new version of the ``vinspect-training`` pipeline
on every submit, so the UI keeps each compiled revision), and starts a run in an experiment.
Authentication is a bearer token: ``--token``/``$KFP_TOKEN``, else the current kubeconfig user's
token (``oc login``), else the pod's service-account token when running in a cluster. TLS is
always verified, against ``$KFP_CA_BUNDLE`` when given (an in-cluster service signed by the
OpenShift service CA), else the system trust store.

With caching on, the pull step's cache key must change whenever the data does: the submitter
computes the run's ``source_version`` (:func:`resolve_source_version`: an ``s3://`` source's ETags, or a live
CVAT task's or project's modification dates read from CVAT) unless one is given. When it cannot
(S3 or CVAT not reachable from here), the uncached pipeline version is run instead, and the
:class:`Submission`'s ``notes`` say why, so a re-submit never trains on a stale cached pull.
"""

import datetime as _dt
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.training import PIPELINE_NAME, SecretNames
from vinspect.errors import VinspectError

SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
SA_SERVICE_CA = Path("/var/run/secrets/kubernetes.io/serviceaccount/service-ca.crt")
DEFAULT_EXPERIMENT = "vinspect"


class SubmitError(VinspectError, RuntimeError):
    """Submitting or scheduling failed; the message says what to check."""


def kubeconfig_token(context: str | None = None) -> str | None:
    """The bearer token of the kubeconfig's (current) user, or None (no kubeconfig, cert auth)."""
    try:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException
    except ImportError:
        return None
    import os

    # Read $KUBECONFIG now: the kubernetes package captures it once, at its import.
    paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p and Path(p).is_file()]
    cfg = client.Configuration()
    try:
        config.load_kube_config(config_file=paths[0] if paths else None, context=context, client_configuration=cfg)
    except (ConfigException, FileNotFoundError, OSError, TypeError):
        return None
    auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
    if not auth:
        return None
    return auth.split(" ", 1)[1] if auth.lower().startswith("bearer ") else auth


def resolve_token(token: str | None = None) -> str | None:
    """The token to use: explicit, ``$KFP_TOKEN``, kubeconfig, then the pod's service account."""
    if token:
        return token
    from vinspect.settings import KFPSettings

    settings = KFPSettings.from_env()
    if settings.token is not None and settings.token.get_secret_value():
        return settings.token.get_secret_value()
    found = kubeconfig_token()
    if found:
        return found
    if SA_TOKEN.is_file():
        return SA_TOKEN.read_text().strip() or None
    return None


def make_client(
    host: str | None = None,
    *,
    token: str | None = None,
    ca_bundle: str | None = None,
    namespace: str | None = None,
):
    """A ``kfp.Client`` for ``host`` with bearer-token auth and verified TLS.

    Args:
        host: API endpoint, e.g. ``https://ds-pipeline-dspa-<ns>.apps.<cluster>`` (OpenShift
            route) or ``https://ds-pipeline-dspa.<ns>.svc:8443`` (in-cluster); default ``$KFP_HOST``.
        token: Bearer token (see :func:`resolve_token`).
        ca_bundle: CA bundle for the endpoint's certificate; default ``$KFP_CA_BUNDLE``, then the
            OpenShift service CA when running in a pod.
        namespace: Namespace of the pipelines server (``$KFP_NAMESPACE``).

    Raises:
        SubmitError: No host, or a CA bundle that does not exist.
    """
    import warnings

    import kfp

    from vinspect.settings import KFPSettings

    settings = KFPSettings.from_env()
    host = (host or settings.host or "").rstrip("/")
    if not host:
        raise SubmitError("no pipelines endpoint: pass --host or set KFP_HOST (the DSPA route URL)")
    ca_bundle = ca_bundle or settings.ca_bundle
    if not ca_bundle and SA_SERVICE_CA.is_file() and ".svc" in host:
        ca_bundle = str(SA_SERVICE_CA)
    if ca_bundle and not Path(ca_bundle).is_file():
        raise SubmitError(f"CA bundle {ca_bundle} does not exist (KFP_CA_BUNDLE / --ca-bundle)")
    namespace = namespace or settings.namespace
    token = resolve_token(token)
    _preflight(host, token, ca_bundle)
    kwargs: dict[str, Any] = {"host": host, "existing_token": token}
    if ca_bundle:
        kwargs["ssl_ca_cert"] = ca_bundle
    if namespace:
        kwargs["namespace"] = namespace
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "works with KFP >= 2.0.0-beta.2"
        return kfp.Client(**kwargs)


def _preflight(host: str, token: str | None, ca_bundle: str | None) -> None:
    """One health request, so that a wrong token or CA fails at once with a clear message.

    (``kfp.Client`` itself retries its health check five times, five seconds apart, and then
    reports only a timeout.)
    """
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{host}/apis/v2beta1/healthz"
    try:
        resp = requests.get(url, headers=headers, verify=ca_bundle or True, timeout=15)
    except requests.exceptions.SSLError as exc:
        raise SubmitError(
            f"TLS verification of {host} failed ({exc}); pass --ca-bundle / KFP_CA_BUNDLE "
            "with the CA that signed its certificate"
        ) from None
    except requests.exceptions.RequestException as exc:
        raise SubmitError(f"cannot reach {url}: {exc}") from None
    if resp.status_code in (401, 403):
        where = "a token" if not token else "the token"
        raise SubmitError(
            f"{host} refused {where} (HTTP {resp.status_code}): set KFP_TOKEN "
            "(`oc whoami -t`) or log in with `oc login`"
        )
    if resp.status_code == 404:
        raise SubmitError(f"{url} not found (HTTP 404): is {host} the pipelines API (the DSPA route)?")
    if resp.status_code >= 400:
        raise SubmitError(f"{url} answered HTTP {resp.status_code}: {resp.text[:300]}")


@dataclass
class Submission:
    """What was created on the server."""

    pipeline_id: str
    version_id: str
    experiment_id: str
    run_id: str | None = None
    recurring_run_id: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    caching: bool | None = None  # whether the run's pipeline version has cached steps
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


def _compile(path: Path, image: str | None, secrets: SecretNames | None, gpus: int, caching: bool = True) -> None:
    from kfp import compiler

    from pipelines.training import build_training_pipeline

    compiler.Compiler().compile(build_training_pipeline(image, secrets, gpus=gpus, caching=caching), str(path))


def upload(client, package: Path, *, name: str = PIPELINE_NAME, suffix: str = "") -> tuple[str, str]:
    """Upload ``package`` as a version of pipeline ``name``, creating the pipeline if needed.

    Versions are named after the git revision and the package's digest, so submitting the same
    compiled pipeline twice re-uses its version instead of piling up copies.

    Returns:
        ``(pipeline_id, version_id)``.
    """
    import hashlib
    import json

    from pipelines.training import git_revision

    digest = hashlib.sha256(package.read_bytes()).hexdigest()[:10]
    version_name = f"{name}-{(git_revision() or 'dev')[:12]}-{digest}{suffix}"
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(str(package), pipeline_name=name, description="vinspect training pipeline")
        pipeline_id = pipeline.pipeline_id
        # Uploading a pipeline also creates its first version from the same package.
        versions = client.list_pipeline_versions(pipeline_id=pipeline_id, page_size=1, sort_by="created_at desc")
        if versions.pipeline_versions:
            return pipeline_id, versions.pipeline_versions[0].pipeline_version_id
    by_name = json.dumps({"predicates": [{"key": "display_name", "operation": "EQUALS", "string_value": version_name}]})
    found = client.list_pipeline_versions(pipeline_id=pipeline_id, page_size=1, filter=by_name)
    if found.pipeline_versions:
        return pipeline_id, found.pipeline_versions[0].pipeline_version_id
    version = client.upload_pipeline_version(str(package), pipeline_version_name=version_name, pipeline_id=pipeline_id)
    return pipeline_id, version.pipeline_version_id


def _s3_client():
    """An S3 client from ``S3Settings``, failing fast: it is only probed for ETags here."""
    import boto3
    from botocore.config import Config

    from vinspect.settings import S3Settings

    settings = S3Settings.from_env()
    if not settings.endpoint_url and settings.access_key_id is None:
        raise ValueError("S3 is not configured here (AWS_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")
    secret = settings.secret_access_key.get_secret_value() if settings.secret_access_key else None
    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=settings.access_key_id.get_secret_value() if settings.access_key_id else None,
        aws_secret_access_key=secret,
        region_name=settings.region,
        verify=settings.ca_bundle or True,
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=5,
            read_timeout=20,
            retries={"max_attempts": 2, "mode": "standard"},
        ),
    )


def _cvat_client():
    """A logged-in CVAT client from ``CVATSettings``."""
    from components.data.cvat_pull import make_client
    from vinspect.settings import CVATSettings

    settings = CVATSettings.from_env()
    if not settings.url:
        raise ValueError("CVAT_URL is not set here (and CVAT_TOKEN, or CVAT_USERNAME and CVAT_PASSWORD)")
    return make_client(
        settings.url,
        token=settings.token.get_secret_value() if settings.token else None,
        username=settings.username,
        password=settings.password.get_secret_value() if settings.password else None,
        ca_bundle=settings.ca_bundle,
        host=settings.host,
    )


def resolve_source_version(arguments: dict[str, Any], *, s3_client=None, cvat_client=None) -> tuple[str, str | None]:
    """The run's ``source_version``, read from S3 or CVAT with the submitter's settings.

    Args:
        arguments: Pipeline arguments (``data_source``, ``cvat_task_id``, ``cvat_project_id``).
        s3_client: boto3 S3 client (default: from ``S3Settings``, built only for an ``s3://`` source).
        cvat_client: ``cvat_sdk.Client`` (default: from ``CVATSettings``, built only for a CVAT source).

    Returns:
        ``(version, None)``, with ``version`` ``""`` when the arguments name no source; or
        ``("", reason)`` when the version cannot be read from here.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from components.data.errors import CVATError
    from pipelines.source import cvat_ids, data_version

    source = str(arguments.get("data_source") or "")
    try:
        task_id, project_id = cvat_ids(arguments)
    except ValueError as exc:
        return "", str(exc)
    what = []
    if source:
        what.append(source)
    if task_id or project_id:
        what.append(f"CVAT task {task_id}" if task_id else f"CVAT project {project_id}")
    try:
        if source.startswith("s3://") and s3_client is None:
            s3_client = _s3_client()
        if (task_id or project_id) and cvat_client is None:
            cvat_client = _cvat_client()
        return data_version(arguments, s3_client=s3_client, cvat_client=cvat_client), None
    except (BotoCoreError, ClientError, CVATError, FileNotFoundError, ValueError) as exc:
        return "", f"cannot read the version of {' and '.join(what)} from here: {exc}"


def submit(
    host: str | None = None,
    *,
    arguments: dict[str, Any] | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    token: str | None = None,
    ca_bundle: str | None = None,
    namespace: str | None = None,
    image: str | None = None,
    secrets: SecretNames | None = None,
    gpus: int = 1,
    enable_caching: bool = True,
    service_account: str | None = None,
    client=None,
) -> Submission:
    """Compile, upload and run the training pipeline on a pipelines server.

    Args:
        host: Pipelines API endpoint (``$KFP_HOST``).
        arguments: Pipeline parameters (``data_source``, ``epochs``, ...).
        experiment: Experiment to run in (created when missing).
        run_name: Run display name (default: pipeline name + UTC time).
        token: Bearer token (see :func:`resolve_token`).
        ca_bundle: CA bundle for the endpoint (``$KFP_CA_BUNDLE``).
        namespace: Pipelines namespace (``$KFP_NAMESPACE``).
        image: Component image (default ``$VINSPECT_IMAGE``, else the image built in ``namespace``
            by the cluster's BuildConfig, see :func:`components.kfp.in_cluster_image`).
        secrets: Names of the S3 / MLflow / CVAT Secrets in that namespace.
        gpus: Accelerator limit of the train step (0: CPU).
        enable_caching: False re-runs every step (a pipeline version compiled with every step
            uncached is uploaded and run). True keeps cached steps, keyed on the data by the
            ``source_version`` argument: computed here by :func:`resolve_source_version` unless given; when
            it cannot be, the uncached version is run and ``Submission.notes`` says why.
        service_account: Service account the run's pods use (it needs rights on
            InferenceServices for the rollout step).
        client: A ready ``kfp.Client`` (tests); built from the other arguments when None.

    Returns:
        The :class:`Submission`.
    """
    client = client or make_client(host, token=token, ca_bundle=ca_bundle, namespace=namespace)
    arguments = dict(arguments or {})
    notes: list[str] = []
    if enable_caching and not arguments.get("source_version"):
        version, why = resolve_source_version(arguments)
        if why:
            # A cached pull keyed on a location alone could return a stale dataset.
            enable_caching = False
            notes.append(f"caching off for this run: {why}; submitting the uncached pipeline version")
        elif version:
            arguments["source_version"] = version
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    with tempfile.TemporaryDirectory(prefix="vinspect-submit-") as tmp:
        package = Path(tmp) / "training_pipeline.yaml"
        from components.kfp import pipeline_image

        # The default image is the one bootstrap builds in this very project.
        _compile(package, image or pipeline_image(namespace), secrets, gpus, caching=enable_caching)
        try:
            pipeline_id, version_id = upload(client, package, suffix="" if enable_caching else "-nocache")
            exp = client.create_experiment(experiment, namespace=namespace or None)
            run = client.run_pipeline(
                experiment_id=exp.experiment_id,
                job_name=run_name or f"{PIPELINE_NAME} {stamp}",
                params=arguments,
                pipeline_id=pipeline_id,
                version_id=version_id,
                service_account=service_account,
            )
        except Exception as exc:  # the KFP SDK raises ApiException, urllib3 and token errors: all SubmitError
            raise SubmitError(_describe(exc, client)) from exc
    return Submission(
        pipeline_id,
        version_id,
        exp.experiment_id,
        run_id=run.run_id,
        arguments=arguments,
        caching=enable_caching,
        notes=notes,
    )


def _describe(exc: Exception, client) -> str:
    status = getattr(exc, "status", None)
    host = getattr(getattr(client, "_existing_config", None), "host", "the pipelines server")
    if status == 401:
        return f"{host} refused the credentials (HTTP 401): set KFP_TOKEN or log in with `oc login`"
    if status == 403:
        return f"{host}: not allowed (HTTP 403): the user or service account needs access to the DSPA namespace"
    if status:
        body = str(getattr(exc, "body", "") or "")[:300]
        return f"{host} answered HTTP {status}: {getattr(exc, 'reason', '')} {body}".strip()
    return f"cannot reach {host}: {exc}"
