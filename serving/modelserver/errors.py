"""The model server's errors: one class per HTTP status, as kserve's ``errors.py``.

Every layer of the server (sources, model, repository, data plane) raises these; the REST layer
turns any of them into ``{"error": message}`` with :attr:`ModelServerError.status_code`, so the
message is what the client reads. They derive from :class:`vinspect.errors.VinspectError`, so a
caller outside HTTP (the CLI, a test, a pipeline step loading a model in-process) catches them
with the project's other expected failures.
"""

from __future__ import annotations

from vinspect.errors import VinspectError


class ModelServerError(VinspectError):
    """Base of the errors that map to an HTTP status; the message is shown to the client."""

    status_code = 500


class InvalidInput(ModelServerError, ValueError):
    """Bad request: wrong tensor name, shape, datatype, malformed or oversized body."""

    status_code = 400


class ModelNotFound(ModelServerError):
    """No model (or model version) of that name is configured."""

    status_code = 404


class ModelNotReady(ModelServerError):
    """The model is configured but still loading (or failed to load)."""

    status_code = 503


class ModelLoadError(ModelServerError):
    """A load request could not be satisfied (missing file, unreadable ONNX)."""

    status_code = 400


class Unauthorized(ModelServerError):
    """No bearer token, or the wrong one."""

    status_code = 401


class Forbidden(ModelServerError):
    """The request is not allowed here (repository API disabled, uri outside the model roots)."""

    status_code = 403


class RequestTimeout(ModelServerError):
    """The client stopped sending the body it announced."""

    status_code = 408


class PayloadTooLarge(ModelServerError):
    """The body (or its decompressed form) is larger than the server accepts."""

    status_code = 413


class ClientGone(ModelServerError):
    """The client closed the connection mid-body; nobody reads the answer."""

    status_code = 400
