"""Model notifications as CloudEvents: gate rejected, model promoted, rollback, drift alert.

Each is a CloudEvent of type ``io.vinspect.model.<what>`` POSTed to one URL: the Knative Broker's
ingress on the cluster (where Triggers fan it out to chat, ticketing or a retraining trigger),
or any webhook locally (``VINSPECT_NOTIFY_URL``). Both CloudEvents HTTP modes are spoken:
**binary** (attributes as ``ce-*`` headers, the JSON data as the body; the Broker's native form)
and **structured** (``application/cloudevents+json``, the whole event as the body; what a plain
webhook reads most easily).

A notification never fails its caller: the gate, a promotion or a rollback has already happened
when it is sent, so a down Broker or webhook is logged as a warning (without the token) and the
call returns False.

=====================================  =========================================================
type                                   data
=====================================  =========================================================
``io.vinspect.model.gate.rejected``    model, dataset_id, reasons, metrics, run_id
``io.vinspect.model.promoted``         model, version, previous_version, alias, target
``io.vinspect.model.rolledback``       model, version (now serving), from_version, reason, target
``io.vinspect.model.drift.detected``   model, version, camera, signals ({signal: {psi, ks}}), threshold
=====================================  =========================================================

``subject`` is the model name (the camera for a drift alert), so a Trigger can filter on it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Mapping, Sequence

from vinspect.errors import VinspectError

log = logging.getLogger(__name__)

TYPE_PREFIX = "io.vinspect.model."
GATE_REJECTED = TYPE_PREFIX + "gate.rejected"
PROMOTED = TYPE_PREFIX + "promoted"
ROLLED_BACK = TYPE_PREFIX + "rolledback"
DRIFT_DETECTED = TYPE_PREFIX + "drift.detected"
EVENT_TYPES = (GATE_REJECTED, PROMOTED, ROLLED_BACK, DRIFT_DETECTED)
MODES = ("binary", "structured")


class NotifyError(VinspectError, ValueError):
    """An unknown notification mode or kind."""


class Notifier:
    """Sends model CloudEvents to one URL; every failure is logged, none is raised.

    Args:
        url: Broker ingress or webhook URL; None or empty turns notifications off.
        mode: ``binary`` or ``structured`` CloudEvents HTTP content mode.
        token: Bearer token for a webhook that wants one (never logged).
        timeout_s: Seconds per delivery.
        source: CloudEvents ``source``.
        verify: TLS verification: True, or a CA bundle path.
        client: An ``httpx.Client`` to use (tests); one is made per send otherwise.
    """

    def __init__(
        self,
        url: str | None,
        *,
        mode: str = "binary",
        token: str | None = None,
        timeout_s: float = 5.0,
        source: str = "/vinspect",
        verify: bool | str = True,
        client: Any = None,
    ):
        if mode not in MODES:
            raise NotifyError(f"VINSPECT_NOTIFY_MODE {mode!r} is not one of {MODES}")
        self.url, self.mode, self._token = url or None, mode, token
        self.timeout_s, self.source, self.verify, self._client = timeout_s, source, verify, client

    @classmethod
    def from_settings(cls, settings: Any = None) -> "Notifier":
        """From :class:`vinspect.settings.NotifySettings` (read from the environment when None)."""
        if settings is None:
            from vinspect.settings import NotifySettings

            settings = NotifySettings.from_env()
        return cls(
            settings.url,
            mode=settings.mode,
            token=settings.token.get_secret_value() if settings.token else None,
            timeout_s=settings.timeout_s,
            source=settings.source,
            verify=settings.ca_bundle or True,
        )

    def __repr__(self) -> str:
        return f"Notifier(url={self.url!r}, mode={self.mode!r})"

    def event(self, event_type: str, data: Mapping[str, Any], subject: str | None = None):
        """Build the CloudEvent (``cloudevents.v1.http.CloudEvent``)."""
        from cloudevents.v1.http import CloudEvent

        from serving.events import now_iso

        attrs = {
            "type": event_type,
            "source": self.source,
            "id": str(uuid.uuid4()),
            "time": now_iso(),
            "datacontenttype": "application/json",
        }
        if subject:
            attrs["subject"] = subject
        return CloudEvent(attrs, dict(data))

    def send(self, event_type: str, data: Mapping[str, Any], subject: str | None = None) -> bool:
        """Deliver one event. Returns True on a 2xx answer; False (logged) otherwise or when off."""
        if not self.url:
            log.debug("notifications are off (no VINSPECT_NOTIFY_URL): %s not sent", event_type)
            return False
        try:
            from cloudevents.v1.conversion import to_binary, to_structured

            event = self.event(event_type, data, subject)
            headers, body = (to_binary if self.mode == "binary" else to_structured)(event)
            headers = dict(headers)
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
            if self._client is not None:
                response = self._client.post(self.url, headers=headers, content=body, timeout=self.timeout_s)
            else:
                import httpx

                with httpx.Client(verify=self.verify) as client:
                    response = client.post(self.url, headers=headers, content=body, timeout=self.timeout_s)
        except Exception as exc:  # never fail the caller: the model action already happened
            log.warning(
                "notification %s to %s not delivered: %s",
                event_type,
                self.url,
                type(exc).__name__ + (f": {exc}" if self._token is None or self._token not in str(exc) else ""),
            )
            return False
        if not 200 <= response.status_code < 300:
            log.warning("notification %s to %s refused: HTTP %s", event_type, self.url, response.status_code)
            return False
        return True

    # ------------------------------------------------------------------ the four events

    def gate_rejected(
        self,
        model: str,
        *,
        reasons: Sequence[str] | str,
        dataset_id: str = "",
        metrics: Mapping[str, float] | None = None,
        run_id: str = "",
    ) -> bool:
        """A trained model failed the quality gate."""
        reasons = [reasons] if isinstance(reasons, str) else list(reasons)
        return self.send(
            GATE_REJECTED,
            {
                "model": model,
                "dataset_id": dataset_id,
                "reasons": reasons,
                "metrics": dict(metrics or {}),
                "run_id": run_id,
            },
            model,
        )

    def promoted(
        self,
        model: str,
        version: str | int,
        *,
        previous_version: str | int | None = None,
        alias: str = "champion",
        target: str = "",
    ) -> bool:
        """A model version became the champion (and was deployed to ``target``)."""
        return self.send(
            PROMOTED,
            {
                "model": model,
                "version": str(version),
                "previous_version": None if previous_version is None else str(previous_version),
                "alias": alias,
                "target": target,
            },
            model,
        )

    def rolled_back(
        self,
        model: str,
        version: str | int,
        *,
        from_version: str | int | None = None,
        reason: str = "",
        target: str = "",
    ) -> bool:
        """Serving went back to ``version`` from ``from_version``."""
        return self.send(
            ROLLED_BACK,
            {
                "model": model,
                "version": str(version),
                "from_version": None if from_version is None else str(from_version),
                "reason": reason,
                "target": target,
            },
            model,
        )

    def drift_detected(
        self,
        model: str,
        version: str | int,
        camera: str,
        signals: Mapping[str, Mapping[str, float]],
        *,
        threshold: float,
    ) -> bool:
        """The live window of a camera drifted past ``threshold`` on ``signals``."""
        return self.send(
            DRIFT_DETECTED,
            {
                "model": model,
                "version": str(version),
                "camera": camera,
                "signals": {k: dict(v) for k, v in signals.items()},
                "threshold": threshold,
            },
            camera,
        )


def notify(kind: str, *args: Any, **kwargs: Any) -> bool:
    """One-line form for the gate/promote/rollback paths: settings read now, failures only logged.

    ``notify("promoted", "metal-nut", 7, previous_version=6, target="kserve")`` is
    ``Notifier.from_settings().promoted(...)``; ``kind`` is one of ``gate_rejected``, ``promoted``,
    ``rolled_back``, ``drift_detected``.
    """
    if kind not in ("gate_rejected", "promoted", "rolled_back", "drift_detected"):
        raise NotifyError(f"unknown notification {kind!r}")
    try:
        notifier = Notifier.from_settings()
    except Exception as exc:  # noqa: BLE001 - a bad setting (of any kind) must not fail a promotion either
        log.warning("notifications misconfigured, %s not sent: %s", kind, exc)
        return False
    return getattr(notifier, kind)(*args, **kwargs)
