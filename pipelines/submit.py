"""Submit the training pipeline to Kubeflow Pipelines / OpenShift AI Data Science Pipelines.

``submit`` compiles the pipeline, uploads it (a new version of the ``vinspect-training`` pipeline
on every submit, so the UI keeps each compiled revision), and starts a run in an experiment.
Authentication is a bearer token: ``--token``/``$KFP_TOKEN``, else the current kubeconfig user's
token (``oc login``), else the pod's service-account token when running in a cluster. TLS is
always verified, against ``$KFP_CA_BUNDLE`` when given (an in-cluster service signed by the
OpenShift service CA), else the system trust store.
"""

import datetime as _dt
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.training import PIPELINE_NAME, SecretNames

SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
SA_SERVICE_CA = Path("/var/run/secrets/kubernetes.io/serviceaccount/service-ca.crt")
DEFAULT_EXPERIMENT = "vinspect"


class SubmitError(RuntimeError):
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
        raise SubmitError(f"TLS verification of {host} failed ({exc}); pass --ca-bundle / KFP_CA_BUNDLE "
                          "with the CA that signed its certificate") from None
    except requests.exceptions.RequestException as exc:
        raise SubmitError(f"cannot reach {url}: {exc}") from None
    if resp.status_code in (401, 403):
        where = "a token" if not token else "the token"
        raise SubmitError(f"{host} refused {where} (HTTP {resp.status_code}): set KFP_TOKEN "
                          "(`oc whoami -t`) or log in with `oc login`")
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
        image: Component image (``$VINSPECT_IMAGE``).
        secrets: Names of the S3 / MLflow / CVAT Secrets in that namespace.
        gpus: Accelerator limit of the train step (0: CPU).
        enable_caching: False re-runs every step (a pipeline version compiled with every step
            uncached is uploaded and run; a CVAT source should be pulled that way).
        service_account: Service account the run's pods use (it needs rights on
            InferenceServices for the rollout step).
        client: A ready ``kfp.Client`` (tests); built from the other arguments when None.

    Returns:
        The :class:`Submission`.
    """
    client = client or make_client(host, token=token, ca_bundle=ca_bundle, namespace=namespace)
    arguments = dict(arguments or {})
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    with tempfile.TemporaryDirectory(prefix="vinspect-submit-") as tmp:
        package = Path(tmp) / "training_pipeline.yaml"
        _compile(package, image, secrets, gpus, caching=enable_caching)
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
        except Exception as exc:
            raise SubmitError(_describe(exc, client)) from exc
    return Submission(pipeline_id, version_id, exp.experiment_id, run_id=run.run_id, arguments=arguments)


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
