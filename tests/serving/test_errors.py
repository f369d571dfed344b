"""Every error the serving modules raise on purpose derives from ``vinspect.errors.VinspectError``.

The CLI catches VinspectError once and prints its message; an error class outside that root would
reach the user as a traceback. Found by walking the modules, so a class added later is checked too.
"""

from __future__ import annotations

import importlib
import inspect

import httpx
import pytest

from vinspect.errors import VinspectError

MODULES = [
    "serving.model_client",
    "serving.v2",
    "serving.httputil",
    "serving.imagelimits",
    "serving.memory",
    "serving.metrics",
    "serving.modelserver.errors",
    "serving.modelserver.sources",
    "serving.modelserver.model",
    "serving.modelserver.repository",
    "serving.modelserver.dataplane",
    "serving.modelserver.rest",
    "serving.modelserver.server",
]


def _errors_defined_in(name: str) -> list[type]:
    module = importlib.import_module(name)
    return [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, BaseException) and obj.__module__ == name
    ]


@pytest.mark.parametrize("name", MODULES)
def test_every_error_class_derives_from_vinspect_error(name):
    outside = [cls.__name__ for cls in _errors_defined_in(name) if not issubclass(cls, VinspectError)]
    assert outside == [], f"{name}: {outside} do not derive from VinspectError"


def test_the_walk_finds_the_error_classes():
    # Guards the test above against finding nothing (a renamed module, a changed walk).
    found = {cls.__name__ for name in MODULES for cls in _errors_defined_in(name)}
    assert {"ModelClientError", "V2ProtocolError", "ImageTooLarge", "ModelServerError", "InvalidInput"} <= found


def test_the_built_in_bases_are_kept():
    from serving.imagelimits import ImageTooLarge
    from serving.v2 import V2ProtocolError

    assert issubclass(ImageTooLarge, ValueError) and issubclass(V2ProtocolError, ValueError)


def test_client_health_checks_answer_false_on_transport_failures_only():
    from serving.model_client import ModelClient

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = ModelClient("http://model.example", "m", transport=httpx.MockTransport(refuse))
    assert client.live() is False and client.ready() is False

    def broken(request: httpx.Request) -> httpx.Response:
        raise KeyError("a bug, not the network")

    client = ModelClient("http://model.example", "m", transport=httpx.MockTransport(broken))
    with pytest.raises(KeyError):  # a bug is not reported as "the server is down"
        client.live()
