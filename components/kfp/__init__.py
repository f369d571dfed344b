"""KFP components: one thin ``@dsl.component`` per pipeline step over the pure cores.

Each module here holds one component function. The function body only does path plumbing
(artifact paths in, artifact paths out) and imports its core from ``components.data``,
``components.model``, ``components.registry`` or ``components.rollout`` *inside* the body: KFP
ships the body's source to the pod, where the pipeline image (built from this repository) has
those packages installed. Nothing is installed at run time (``install_kfp_package=False``, no
``packages_to_install``).

The components are built by :func:`build_components` when a pipeline is compiled, so the base
image is read from ``VINSPECT_IMAGE`` at compile time, never at import.
"""

import os
from dataclasses import dataclass
from typing import Any, Callable

# The pipeline image `vinspect infra bootstrap` builds in the cluster (BuildConfig
# vinspect-pipeline, infra/manifests/base/builds) and pushes to the internal registry, where the
# step pods of the Data Science Pipelines project pull it from. Nothing is published elsewhere.
INTERNAL_REGISTRY = "image-registry.openshift-image-registry.svc:5000"
PIPELINE_IMAGE_STREAM = "vinspect-pipeline"
PIPELINE_IMAGE_TAG = "latest"
DEFAULT_NAMESPACE = "vinspect"


def in_cluster_image(namespace: str | None = None) -> str:
    """The in-cluster pipeline image of a project: ``<internal registry>/<ns>/vinspect-pipeline:latest``.

    Args:
        namespace: The Data Science Pipelines project (default ``$KFP_NAMESPACE``, else ``vinspect``,
            the project ``infra/manifests`` creates).
    """
    namespace = namespace or os.environ.get("KFP_NAMESPACE") or DEFAULT_NAMESPACE
    return f"{INTERNAL_REGISTRY}/{namespace}/{PIPELINE_IMAGE_STREAM}:{PIPELINE_IMAGE_TAG}"


def pipeline_image(namespace: str | None = None) -> str:
    """The image every component runs in: ``$VINSPECT_IMAGE``, else :func:`in_cluster_image`."""
    return os.environ.get("VINSPECT_IMAGE") or in_cluster_image(namespace)


def make_component(func: Callable[..., Any], image: str | None = None):
    """Wrap ``func`` as a lightweight Python component running in the vinspect image.

    Args:
        func: A self-contained component function (imports inside its body).
        image: Base image; defaults to :func:`pipeline_image`.

    Returns:
        The ``kfp.dsl`` component.
    """
    from kfp import dsl

    return dsl.component(func, base_image=image or pipeline_image(), install_kfp_package=False)


@dataclass(frozen=True)
class Components:
    """The pipeline's components, all built for one image."""

    pull_annotations: Any
    validate_and_split: Any
    check_dataset: Any
    train: Any
    export_onnx: Any
    evaluate: Any
    register: Any
    rollout: Any
    report_outcome: Any


def build_components(image: str | None = None) -> Components:
    """Build every component for ``image`` (default :func:`pipeline_image`)."""
    from components.kfp import check_dataset as _check
    from components.kfp import evaluate as _evaluate
    from components.kfp import export_onnx as _export
    from components.kfp import outcome as _outcome
    from components.kfp import pull_annotations as _pull
    from components.kfp import register as _register
    from components.kfp import rollout as _rollout
    from components.kfp import train as _train
    from components.kfp import validate_and_split as _split

    image = image or pipeline_image()
    return Components(
        pull_annotations=make_component(_pull.pull_annotations, image),
        validate_and_split=make_component(_split.validate_and_split, image),
        check_dataset=make_component(_check.check_dataset, image),
        train=make_component(_train.train, image),
        export_onnx=make_component(_export.export_onnx, image),
        evaluate=make_component(_evaluate.evaluate, image),
        register=make_component(_register.register, image),
        rollout=make_component(_rollout.rollout, image),
        report_outcome=make_component(_outcome.report_outcome, image),
    )
