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
    "serving.camera",
    "serving.dashboard.app",
    "serving.detector",
    "serving.drift",
    "serving.events",
    "serving.feedback",
    "serving.images",
    "serving.notify",
    "serving.processor",
    "serving.processor.app",
    "serving.processor.inspector",
    "serving.processor.kafka_loop",
    "serving.processor.knative",
    "serving.processor.store",
    "serving.review",
    "serving.synthetic",
]


def _errors_defined_in(name: str) -> list[type]:
    module = importlib.import_module(name)
    return [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, BaseException) and obj.__module__ == name and not obj.__name__.startswith("_")
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


def _errors():
    from serving.camera import CameraDeliveryError, CameraSourceError
    from serving.dashboard.app import FrameUnavailable, ResultRejected
    from serving.detector import DetectorError
    from serving.drift import DriftError
    from serving.events import PoisonEvent
    from serving.feedback import LoopSettingError
    from serving.imagelimits import ImageTooLarge
    from serving.images import ImageDecodeError
    from serving.notify import NotifyError
    from serving.processor import ProcessorConfigError
    from serving.review import ReviewError
    from serving.synthetic import SyntheticError

    return [
        (CameraSourceError, ValueError),
        (CameraDeliveryError, RuntimeError),
        (FrameUnavailable, LookupError),
        (ResultRejected, ValueError),
        (DetectorError, ValueError),
        (DriftError, ValueError),
        (PoisonEvent, ValueError),
        (LoopSettingError, ValueError),
        (ImageTooLarge, ValueError),
        (ImageDecodeError, ValueError),
        (NotifyError, ValueError),
        (ProcessorConfigError, ValueError),
        (ReviewError, ValueError),
        (SyntheticError, ValueError),
    ]


@pytest.mark.parametrize("error, builtin", _errors(), ids=lambda e: getattr(e, "__name__", ""))
def test_runtime_errors_have_one_root_and_keep_their_builtin(error, builtin):
    assert issubclass(error, VinspectError) and issubclass(error, builtin)


def test_each_raises_where_it_should():
    """A few of them raised by their module, so the classes above are the ones really used."""
    import numpy as np

    from serving import camera, detector, notify, synthetic
    from serving.processor import InspectConfig

    with pytest.raises(camera.CameraSourceError, match="does not exist"):
        camera.load_frames("/nonexistent/frames")
    with pytest.raises(detector.DetectorError, match="did you mean 'openvino'"):
        detector.resolve_engine("openvno")
    with pytest.raises(notify.NotifyError, match="unknown notification"):
        notify.notify("nonsense", "m", 1)
    with pytest.raises(synthetic.SyntheticError, match="unknown nut kind"):
        synthetic.render_nut(np.random.default_rng(0), 64, "dented")
    with pytest.raises(VinspectError, match="result_format"):
        InspectConfig(result_format="other")
