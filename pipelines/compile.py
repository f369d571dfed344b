"""Compile the training pipeline to KFP IR YAML."""

from pathlib import Path

from pipelines.training import SecretNames, build_training_pipeline


def compile_pipeline(
    out: Path,
    *,
    image: str | None = None,
    secrets: SecretNames | None = None,
    revision: str | None = None,
    gpus: int = 1,
    namespace: str | None = None,
) -> Path:
    """Write the training pipeline's IR YAML to ``out`` (through a temp file, then moved).

    Args:
        out: Output file (``.yaml``).
        image: Component image (default ``$VINSPECT_IMAGE``, else the image the cluster builds in
            ``namespace``: :func:`components.kfp.in_cluster_image`).
        secrets: Names of the S3, MLflow and CVAT Secrets.
        revision: Git revision recorded on registered models (default: the checkout's).
        gpus: Accelerator limit of the train step (0: a CPU-only train step).
        namespace: The pipelines project the default image is built in (``$KFP_NAMESPACE``).

    Returns:
        ``out``.
    """
    from kfp import compiler

    from components.kfp import pipeline_image

    image = image or pipeline_image(namespace)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.yaml")  # KFP insists on a .yaml suffix
    try:
        compiler.Compiler().compile(build_training_pipeline(image, secrets, revision=revision, gpus=gpus), str(tmp))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
