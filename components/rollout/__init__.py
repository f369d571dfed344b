"""Rollout: render KServe manifests, deploy to a target, smoke-test over v2, move ``champion``.

:func:`components.rollout.deploy.deploy` is the one entry (the pipeline's rollout step and the CLI
call it; imported from its module, whose name it shares); it runs the one
transaction, :func:`roll_out`, over a :class:`Target`: :class:`KServeTarget` (an InferenceService,
through :mod:`infra.kube`) or :class:`LocalServerTarget` (the local model server). Any failure
rolls back and says why.
"""

from components.rollout.deploy import Rollout, RolloutError, Target, roll_out, s3_reference_publisher
from components.rollout.kserve import KServeTarget, endpoint_url
from components.rollout.local import LocalServerTarget
from components.rollout.render import (
    ServingSpecError,
    render_inference_service,
    render_serving_runtime,
    service_name,
)
from components.rollout.smoke import GoldenImage, SmokeTestError, infer_v2, load_golden, make_v2_smoke

__all__ = [
    "GoldenImage",
    "KServeTarget",
    "LocalServerTarget",
    "Rollout",
    "RolloutError",
    "ServingSpecError",
    "SmokeTestError",
    "Target",
    "endpoint_url",
    "infer_v2",
    "load_golden",
    "make_v2_smoke",
    "render_inference_service",
    "render_serving_runtime",
    "roll_out",
    "s3_reference_publisher",
    "service_name",
]
