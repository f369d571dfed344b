"""KFP step 6: register the model in MLflow and put the ONNX and its precision variants on S3 (OVMS layout)."""

from typing import NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Model


def register(
    onnx_model: Input[Model],
    dataset: Input[Dataset],
    train_report: Input[Artifact],
    eval_report: Input[Artifact],
    model_name: str,
    opset: int,
    git_revision: str,
    pipeline_run_id: str,
    variants: Input[Model] = None,
) -> NamedTuple("RegisterOutputs", [("version", str), ("storage_uri", str), ("s3_uri", str), ("run_id", str)]):
    """Record the run (params, per-epoch metrics, plots, dataset, git revision) and the version.

    The dataset is uploaded to ``s3://<data bucket>/datasets/<dataset_id>/`` and that URI is the
    MLflow dataset input's source.

    Never cached: it changes the registry. Idempotent per ``pipeline_run_id`` (a retried step
    returns the version the first attempt created).

    Args:
        onnx_model: The exported model.
        dataset: The training dataset (its id is tagged on the run and the version).
        train_report: From the train step: ``params.json``, ``results.csv``, ``plots/``.
        eval_report: From the evaluate step: ``metrics.json`` and plots.
        model_name: Registered model name.
        opset: ONNX opset (logged with the training parameters).
        git_revision: Source revision the pipeline was compiled from.
        pipeline_run_id: The KFP run id.
        variants: The export step's precision variants; all are stored under the version, and
            the one the evaluate step chose (``variant.json`` in ``eval_report``) becomes the
            version's storage URI, so the rollout serves it.

    Returns:
        The registered version, its KServe storage URI (the chosen variant's folder), the S3 URI
        of the ONNX and the MLflow run id.
    """
    import json
    from collections import namedtuple
    from pathlib import Path

    from components.data import upload_dataset
    from components.data.manifest import read_manifest
    from components.registry import register_model
    from serving.drift import REFERENCE_FILE, save_reference
    from vinspect.settings import MLflowSettings, S3Settings

    train_dir, eval_dir = Path(train_report.path), Path(eval_report.path)
    params = json.loads((train_dir / "params.json").read_text())
    params["opset"] = opset
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    choice_file = eval_dir / "variant.json"
    variant = json.loads(choice_file.read_text()).get("variant") if choice_file.is_file() else None
    variants_dir = Path(variants.path) if variants is not None and Path(variants.path).is_dir() else None
    if variants_dir is None:
        variant = None  # nothing but the ONNX to serve
    if variant:
        params["serving_variant"] = variant
    results_csv = train_dir / "results.csv"
    plots = sorted((train_dir / "plots").glob("*.png")) + sorted(eval_dir.glob("*.png"))
    manifest = read_manifest(Path(dataset.path))
    s3 = S3Settings.from_env()
    mlflow = MLflowSettings.from_env()
    s3_client = s3.client()
    # The dataset is archived beside the model under its content id (files already there are
    # skipped), so every registered version points at data that outlives the pipeline's artifacts.
    dataset_uri = upload_dataset(s3_client, s3.data_bucket, Path(dataset.path))
    print(f"dataset {manifest.dataset_id} archived at {dataset_uri}")
    info = register_model(
        mlflow.client(),
        s3_client,
        onnx_path=Path(onnx_model.path),
        model_name=model_name,
        bucket=s3.bucket,
        params=params,
        metrics=metrics,
        epoch_metrics_csv=results_csv if results_csv.is_file() else None,
        plots=plots,
        dataset_id=manifest.dataset_id,
        dataset_uri=dataset_uri,
        git_revision=git_revision or None,
        pipeline_run_id=pipeline_run_id,
        experiment=mlflow.experiment,
        variants_dir=variants_dir,
        variant=variant,
    )
    ref_file = eval_dir / REFERENCE_FILE
    if ref_file.is_file():
        # Next to the version (s3://<bucket>/<model>/<version>/drift-reference.json), where the
        # processor looks when this version starts answering.
        ref = json.loads(ref_file.read_text())
        ref["model"] = {**(ref.get("model") or {}), "name": model_name, "version": str(info.version)}
        print(f"drift reference at {save_reference(s3_client, s3.bucket, model_name, info.version, ref)}")
    else:
        print("[vinspect] warning: the evaluate step wrote no drift reference; drift is off for this version")
    print(
        f"registered {info.name} version {info.version} at {info.s3_uri}; serving variant "
        f"{info.variant} ({info.variant_precision or 'runtime precision'}) from {info.storage_uri}"
    )
    return namedtuple("RegisterOutputs", ["version", "storage_uri", "s3_uri", "run_id"])(
        str(info.version), info.storage_uri, info.s3_uri, info.run_id
    )
