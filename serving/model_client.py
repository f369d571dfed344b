"""A small KServe v2 REST client: binary tensors, TLS verification, bearer token, retries.

Works against OpenVINO Model Server (KServe InferenceService, OpenShift AI model routes)
and against `serving.modelserver`. TLS verification is always on; a private CA is given
as a bundle file. The bearer token is sent as a header only and never logged or shown in
`repr()`.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from typing import Any

import numpy as np

from serving import v2
from vinspect.errors import VinspectError

log = logging.getLogger(__name__)


class ModelClientError(VinspectError):
    """Base class of the client's errors."""


class ModelUnavailable(ModelClientError):
    """The server could not be reached or answered 5xx/503/429: worth retrying later."""


class ModelRequestRejected(ModelClientError):
    """The server refused the request (4xx): retrying the same request will not help."""

    def __init__(self, message: str, status_code: int):
        super().__init__(message)
        self.status_code = status_code


def _secret_value(token: Any) -> str | None:
    if token is None:
        return None
    value = token.get_secret_value() if hasattr(token, "get_secret_value") else str(token)
    return value or None


class ModelClient:
    """Client for one model on a v2 (Open Inference Protocol) server.

    Args:
        base_url: Server root, e.g. `https://metal-nut-predictor.ns.svc:8888`
            (without `/v2`).
        model_name: The model (InferenceService) name.
        token: Optional bearer token (str or pydantic SecretStr).
        ca_bundle: PEM file of extra CAs to trust; verification stays on either way.
        timeout: Seconds per HTTP request.
        retries: Extra attempts on `ModelUnavailable` before giving up.
        backoff: First retry delay in seconds; doubles each attempt, with jitter.
        max_backoff: Cap on one retry delay.
        binary: Use the binary tensor extension (else JSON tensors).
        transport: Optional httpx transport (e.g. a mock transport in unit tests).
    """

    def __init__(
        self,
        base_url: str,
        model_name: str,
        *,
        token: Any = None,
        ca_bundle: str | None = None,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        binary: bool = True,
        transport: Any = None,
    ):
        import httpx

        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.binary = binary
        headers = {"Accept": "application/json, application/octet-stream"}
        secret = _secret_value(token)
        if secret:
            if self.base_url.startswith("http://"):
                log.warning("sending a bearer token to %s over plain HTTP", self.base_url)
            headers["Authorization"] = f"Bearer {secret}"
        self._has_token = bool(secret)
        verify: Any = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            verify=verify,
            transport=transport,
        )

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> ModelClient:
        """Build from `vinspect.settings.ModelServerSettings` (url, model, token, CA, timeout)."""
        kwargs.setdefault("timeout", settings.timeout_s)
        return cls(
            settings.url,
            settings.model_name,
            token=settings.token,
            ca_bundle=settings.ca_bundle,
            **kwargs,
        )

    def __repr__(self) -> str:
        auth = "bearer=***" if self._has_token else "no-auth"
        return f"ModelClient({self.base_url!r}, model={self.model_name!r}, {auth})"

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- HTTP with retries -------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                error: ModelClientError = ModelUnavailable(
                    f"{method} {self.base_url}{path}: {type(exc).__name__}: {exc}"
                )
            else:
                if response.status_code < 400:
                    return response
                message = _error_message(response)
                if response.status_code in (408, 429) or response.status_code >= 500:
                    error = ModelUnavailable(f"{method} {self.base_url}{path}: HTTP {response.status_code}: {message}")
                else:
                    raise ModelRequestRejected(
                        f"{method} {self.base_url}{path}: HTTP {response.status_code}: {message}",
                        response.status_code,
                    )
            if attempt >= self.retries:
                raise error
            delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random())
            log.debug("retrying in %.2fs after: %s", delay, error)
            time.sleep(delay)
            attempt += 1

    def _model_path(self, version: str | None) -> str:
        path = f"/v2/models/{self.model_name}"
        return f"{path}/versions/{version}" if version else path

    # -- API ---------------------------------------------------------------------------

    def live(self) -> bool:
        """True when `/v2/health/live` answers 200 (no retries)."""
        import httpx

        try:
            return self._http.get("/v2/health/live").status_code == 200
        except httpx.HTTPError:  # any transport failure means "not live"
            return False

    def ready(self) -> bool:
        """True when the model answers 200 on its ready endpoint (no retries)."""
        import httpx

        try:
            return self._http.get(f"{self._model_path(None)}/ready").status_code == 200
        except httpx.HTTPError:  # any transport failure means "not ready"
            return False

    def metadata(self, version: str | None = None) -> dict[str, Any]:
        """Return the model metadata (`name`, `versions`, `inputs`, `outputs`)."""
        return self._request("GET", self._model_path(version)).json()

    def infer(
        self,
        inputs: dict[str, np.ndarray],
        outputs: list[str] | None = None,
        *,
        version: str | None = None,
        request_id: str | None = None,
    ) -> v2.InferResponse:
        """Run one inference.

        Args:
            inputs: Input tensor name -> array (datatype follows the dtype).
            outputs: Output names to return (None: all).
            version: Model version to address (None: what the server serves).
            request_id: Echoed by the server.

        Returns:
            The decoded response (`.outputs[name].array`, `.model_version`).

        Raises:
            ModelUnavailable: Server unreachable or failing after all retries.
            ModelRequestRejected: The server answered 4xx.
        """
        # Parts, not one joined body: the image tensor goes out without an extra copy.
        body, headers = v2.encode_request_parts(
            inputs,
            outputs,
            binary_inputs=self.binary,
            binary_outputs=self.binary,
            request_id=request_id,
        )
        response = self._request("POST", f"{self._model_path(version)}/infer", content=body, headers=headers)
        header_length = response.headers.get(v2.HEADER_LENGTH)
        try:
            return v2.decode_response(response.content, int(header_length) if header_length is not None else None)
        except (v2.V2ProtocolError, ValueError) as exc:
            raise ModelClientError(f"malformed response from {self.base_url}: {exc}") from None

    def load(self, uri: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Ask the server to (re)load the model (repository extension) and wait for it."""
        params: dict[str, Any] = {}
        if uri:
            params["uri"] = uri
        if version is not None:
            params["version"] = str(version)
        return self._request(
            "POST", f"/v2/repository/models/{self.model_name}/load", json={"parameters": params}
        ).json()


def _error_message(response: Any) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])
    except ValueError:
        pass
    return response.text[:200]
