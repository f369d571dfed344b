"""The rollout: one transaction over a serving target, and the one entry the pipeline and the CLI call.

The transaction (:func:`roll_out`) is the same wherever the model serves:

1. the target checks its inputs and records what serves now (nothing changed yet);
2. the target deploys the version and waits until it serves it (KServe: the InferenceService is
   ``Ready`` at its new generation; the local server: it reports the version);
3. the smoke test calls it over v2 where the image processor will;
4. the MLflow ``champion`` alias moves (through ``move_alias``) and the version is tagged with
   where it serves;
5. on any failure in 2-4 the target puts back what served before and only this call's own alias
   move is undone (never another promote's), and the result says why; when the rollback itself
   fails, :class:`RolloutError` says what was tried.

A :class:`Target` is what differs: :class:`components.rollout.kserve.KServeTarget` (an
InferenceService, through :mod:`infra.kube`) and :class:`components.rollout.local.LocalServerTarget`
(the local model server's repository API). :func:`deploy` builds the one the settings name, with
its smoke test and drift-reference publisher, and runs the transaction.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from components.registry import champion_state, promote, undo_move
from vinspect.errors import VinspectError

log = logging.getLogger(__name__)

TAG_DEPLOYED = "vinspect.deployed_to"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class RolloutError(VinspectError, RuntimeError):
    """A rollout step failed, or its rollback did; the message says which and why."""


@dataclass
class Rollout:
    """What a rollout did.

    Attributes:
        status: ``deployed``, or ``rolled_back`` (serving is back on what served before).
        target: ``kserve`` or ``local``.
        service: The name the model answers under (the InferenceService, or the model's name on
            the local server).
        version: The version rolled out.
        namespace: The InferenceService's namespace (None for the local server).
        reason: Why it was rolled back (None when deployed): the step and its error.
        previous_version: The version that served before (None for a first rollout).
        url: The v2 base URL the smoke test called.
        action: What the apply did to the InferenceService (``created``, ``configured``,
            ``unchanged``; None for the local server).
        smoke: The smoke test's report.
        restore: What the rollback did (None when deployed).
        alias: What undoing the alias move did (None when deployed).
        drift_reference: Where the served version's drift reference was published, or why not
            (None when nothing was to be published, or when rolled back).
        elapsed_s: Seconds the rollout took.
    """

    status: str
    target: str
    service: str
    version: str
    namespace: str | None = None
    reason: str | None = None
    previous_version: str | None = None
    url: str | None = None
    action: str | None = None
    smoke: Any = None
    restore: str | None = None
    alias: Any = None
    drift_reference: str | None = None
    elapsed_s: float = 0.0

    @property
    def deployed(self) -> bool:
        """Whether the version serves and is the champion."""
        return self.status == "deployed"

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for JSON output)."""
        return dataclasses.asdict(self)


class Target(Protocol):
    """Where a version serves; one object per rollout.

    Attributes:
        kind: ``kserve`` or ``local`` (the result's ``target``).
        service: The name the model answers under (set by :meth:`prepare`).
        namespace: The namespace, or None.
        action: What deploying did (set by :meth:`roll`; None where the target has no such word).
        location: Where the version serves, for the ``vinspect.deployed_to`` tag.
    """

    kind: str
    service: str
    namespace: str | None
    action: str | None
    location: str

    def prepare(self, mlflow_client: Any, model_name: str, version: str) -> None:
        """Resolve and check the inputs (storage URI, variant, names); change nothing. Raises on bad input."""

    def snapshot(self) -> str | None:
        """Record what serves now, to restore it; returns its version (None: nothing serves)."""

    def roll(self, stage: Callable[[str], None]) -> str | None:
        """Deploy the version and wait until it serves it; returns the v2 base URL to smoke-test.

        Calls ``stage(description)`` before each step, so a failure names the step.
        """

    def restore(self) -> str:
        """Put back what :meth:`snapshot` recorded; returns what was done.

        Raises:
            RolloutError: The restore failed (the message says what was tried).
        """

    def settle(self) -> str:
        """After a restore, what to add to its report (KServe waits for Ready again); may be empty."""

    def close(self) -> None:
        """Release what the target opened (an HTTP client)."""


def s3_reference_publisher(s3, bucket: str) -> Callable[[str, str], Any]:
    """``publish(model_name, version)``: copy the version's drift reference to the served key.

    See :func:`serving.drift.publish_served_reference` (the processor on KServe/OVMS, where every
    version answers as ``1``, reads that key).
    """
    from serving.drift import publish_served_reference

    return lambda model_name, version: publish_served_reference(s3, bucket, model_name, version)


def _publish_reference(publish: Callable[[str, str], Any] | None, model_name: str, result: Rollout) -> None:
    """Publish the now-serving version's drift reference; a failure only warns.

    Drift is an observation of the served model, not a condition of serving it: the rollout
    stands, and ``result.drift_reference`` says what happened.
    """
    if publish is None:
        return
    version = result.version
    try:
        uri = publish(model_name, version)
        result.drift_reference = uri or f"none: version {version} has no drift reference (drift off)"
    except Exception as exc:  # noqa: BLE001 - any failure of the publisher only warns (see above)
        result.drift_reference = f"not published: {type(exc).__name__}: {exc}"
        log.warning("drift reference of %s v%s not published: %s", model_name, version, exc)


def roll_out(
    target: Target,
    mlflow_client: Any,
    *,
    model_name: str,
    version: str | int,
    smoke: Callable[[str, str], Any] | None = None,
    move_alias: Callable[[Any, str, str], Any] = promote,
    drift_reference: Callable[[str, str], Any] | None = None,
) -> Rollout:
    """Deploy ``version`` on ``target``, check it, and make it the champion; roll back on failure.

    Args:
        target: Where it serves (:class:`Target`).
        mlflow_client: ``MlflowClient``; ``champion`` moves only after every check passed.
        model_name: Registered model name.
        version: MLflow version to deploy.
        smoke: ``smoke(base_url, model) -> report`` raising on failure (see
            :func:`components.rollout.smoke.make_v2_smoke`); None skips the smoke test.
        move_alias: ``move_alias(mlflow_client, model_name, version)`` moves ``champion``
            after every check passed (default :func:`~components.registry.promote`; a
            deployed rollback passes one that pops the history instead).
        drift_reference: ``publish(model_name, version)`` called once the version serves and is
            the champion (:func:`s3_reference_publisher`); a failure there only warns. None:
            nothing is published.

    Returns:
        The :class:`Rollout`; ``status`` is ``rolled_back`` (with ``reason``) when a step failed
        and serving is back on what served before.

    Raises:
        RolloutError: When the rollback itself failed (the cluster or server then needs a
            person: the message says what was tried), or the target could not read what serves now.
        ServingSpecError: Bad input, found before anything changed.
    """
    version = str(version)
    try:
        target.prepare(mlflow_client, model_name, version)
        result = Rollout(
            status="rolled_back",
            target=target.kind,
            service=target.service,
            version=version,
            namespace=target.namespace,
        )
        result.previous_version = target.snapshot()
        started = time.monotonic()
        stage = "deploying"

        def at(step: str) -> None:
            nonlocal stage
            stage = step

        moved = before_move = None
        try:
            result.url = target.roll(at)
            result.action = target.action
            if smoke is not None:
                at("smoke-testing")
                if not result.url:
                    raise RolloutError(f"{target.location} is serving but reports no URL to test")
                result.smoke = smoke(result.url, target.service)
            at("moving the champion alias")
            before_move = champion_state(mlflow_client, model_name)
            moved = move_alias(mlflow_client, model_name, version)
            mlflow_client.set_model_version_tag(model_name, version, TAG_DEPLOYED, target.location)
        except Exception as exc:  # noqa: BLE001 - whatever failed, serving goes back; the reason keeps its message
            result.action = target.action
            result.reason = f"{stage} failed: {exc}"
            log.warning("rollout of %s v%s failed while %s: %s; rolling back", model_name, version, stage, exc)
            problems = []
            try:
                result.restore = target.restore()
            except RolloutError as restore_exc:
                problems.append(str(restore_exc))
            try:
                # Only this call's own alias move is undone, and only if nobody moved it since:
                # a failure here must never undo another promote's success.
                result.alias = undo_move(mlflow_client, model_name, moved, before=before_move, target=version)
            except Exception as alias_exc:  # noqa: BLE001 - reported with the other rollback problems
                problems.append(f"restoring the champion alias failed: {alias_exc}")
            if problems:
                raise RolloutError(f"{result.reason}; rollback incomplete: {'; '.join(problems)}") from exc
            result.restore += target.settle()
            result.elapsed_s = round(time.monotonic() - started, 3)
            return result
    finally:
        target.close()
    result.status = "deployed"
    _publish_reference(drift_reference, model_name, result)
    result.elapsed_s = round(time.monotonic() - started, 3)
    log.info("%s v%s deployed to %s (%s)", model_name, version, target.location, result.action or "loaded")
    return result


def deploy(
    mlflow_client: Any,
    *,
    model_name: str,
    version: str,
    mode: str,
    storage_uri: str | None = None,
    golden: Sequence[Any] | None = None,
    smoke_rule: dict[str, Any] | None = None,
    smoke_model: str | None = None,
    verify: Any = None,
    namespace: str | None = None,
    data_connection: str | None = None,
    service: str | None = None,
    model_url: str | None = None,
    timeout_s: float = 600.0,
    move_alias: Callable[[Any, str, str], Any] = promote,
    in_cluster: bool = False,
) -> Rollout:
    """Roll ``version`` out where ``mode`` says, with the settings of this process.

    The pipeline's rollout step and ``vinspect model promote|rollback --deploy`` both call this.
    The bearer token and CA bundle come from :class:`~vinspect.settings.ModelServerSettings`, the
    drift-reference publisher from :class:`~vinspect.settings.S3Settings` (none without S3
    settings), the cluster client from :func:`infra.kube.connect`.

    Args:
        mlflow_client: ``MlflowClient``.
        model_name: Registered model name.
        version: Version to deploy.
        mode: ``local`` (the local model server), ``raw`` (KServe RawDeployment + OVMS) or
            ``modelmesh`` (KServe ModelMesh).
        storage_uri: ``s3://<bucket>/<model>/<version>/`` (None: the version's storage URI tag).
        golden: Golden images of the smoke test (:class:`~components.rollout.smoke.GoldenImage`);
            None: no smoke test.
        smoke_rule: Keyword arguments of :func:`~components.rollout.smoke.make_v2_smoke` for
            the rule (``names``, ``conf``, ``min_classes``).
        smoke_model: Model name the smoke test calls instead of the served one (the image
            processor's, on the cluster).
        verify: TLS verification of the smoke test when no CA bundle is configured (default
            the system's); the pipeline passes the cluster's service CA.
        namespace: KServe namespace (None in a pod: the pod's own).
        data_connection: Name of the data-connection Secret the model server reads S3 with (KServe).
        service: InferenceService name, or the model's name on the local server (None: from the
            model name).
        model_url: The local server's base URL (None: ``$VINSPECT_MODEL_URL``); for KServe, where
            to smoke-test instead of the InferenceService's status URL (the processor's URL).
        timeout_s: How long to wait for the model to serve.
        move_alias: How ``champion`` moves (see :func:`roll_out`).
        in_cluster: Connect with the pod's service account only (the pipeline step).

    Returns:
        The :class:`Rollout`.

    Raises:
        ServingSpecError: An unknown mode, or inputs that cannot make a valid manifest.
        KubeError: No cluster configuration, or the cluster could not be read.
        RolloutError: The rollback failed (see :func:`roll_out`).
    """
    from components.rollout.render import MODES, ServingSpecError
    from components.rollout.smoke import make_v2_smoke, smoke_as
    from vinspect.settings import ModelServerSettings, S3Settings

    if mode != "local" and mode not in MODES:
        raise ServingSpecError(f"serving mode {mode!r}: expected 'raw', 'modelmesh' or 'local'")
    # The served version's drift reference follows the deployment (the processor on KServe/OVMS
    # reads it under a stable key); without S3 settings there is nowhere to write it.
    s3s = S3Settings.from_env()
    publish = s3_reference_publisher(s3s.client(), s3s.bucket) if (s3s.endpoint_url or s3s.access_key_id) else None
    server = ModelServerSettings.from_env()
    token = server.token.get_secret_value() if server.token else None
    smoke = None
    if golden is not None:
        smoke = make_v2_smoke(
            list(golden),
            token=token,
            verify=server.ca_bundle or verify or True,
            # The local server reports the MLflow version it loaded; OVMS always says "1".
            expect_version=version if mode == "local" else None,
            **(smoke_rule or {}),
        )
        if smoke_model:
            smoke = smoke_as(smoke, smoke_model)
    if mode == "local":
        from components.rollout.local import LocalServerTarget

        target: Target = LocalServerTarget(
            model_url or server.url, served_name=service, storage_uri=storage_uri, timeout_s=timeout_s, token=token
        )
    else:
        from components.rollout.kserve import KServeTarget
        from infra import kube

        client = kube.connect(in_cluster=in_cluster)
        if not namespace and in_cluster:
            namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        target = KServeTarget(
            client,
            namespace=namespace or "",
            data_connection=data_connection or "",
            mode=mode,
            service=service,
            storage_uri=storage_uri,
            smoke_url=model_url,
            timeout_s=timeout_s,
        )
    return roll_out(
        target,
        mlflow_client,
        model_name=model_name,
        version=version,
        smoke=smoke,
        move_alias=move_alias,
        drift_reference=publish,
    )
