"""Rollout: render KServe manifests, apply and wait, smoke-test over v2, move ``champion``.

:func:`rollout_kserve` targets a cluster (through a ``CustomObjectsApi``), :func:`rollout_local`
the local model server; both roll back on any failure and say why.
"""

from components.rollout.kserve import endpoint_url, rollout_kserve
from components.rollout.kube import RolloutError, apply_object, merge_patch, wait_ready
from components.rollout.local import rollout_local
from components.rollout.render import (
    RenderError,
    render_inference_service,
    render_serving_runtime,
    service_name,
)
from components.rollout.smoke import GoldenImage, SmokeTestError, infer_v2, load_golden, make_v2_smoke

__all__ = [
    "GoldenImage",
    "RenderError",
    "RolloutError",
    "SmokeTestError",
    "apply_object",
    "endpoint_url",
    "infer_v2",
    "load_golden",
    "make_v2_smoke",
    "merge_patch",
    "render_inference_service",
    "render_serving_runtime",
    "rollout_kserve",
    "rollout_local",
    "service_name",
    "wait_ready",
]
