"""Every error the runtime raises on purpose derives from VinspectError and keeps its built-in base."""

from __future__ import annotations

import pytest

from vinspect.errors import VinspectError


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
