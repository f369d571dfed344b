"""The training pipeline: wiring only (outputs to inputs, secrets, GPUs, caching, branches).

    pull_annotations -> validate_and_split -> check_dataset
      if action == "train":
          train -> export_onnx (+ precision variants) -> evaluate (+ variant choice)
          if gate == "passed":
              if onnx sha256 != champion's:  register -> rollout          (deployed; champion moves)
              else:                          report_outcome("unchanged")  (identical re-run)
          else:                 report_outcome("rejected")   (run ends green, nothing deployed)
      else:                     report_outcome("skipped")    (dataset is already the champion's)

Built by :func:`build_training_pipeline` so that the image and the Secret names are read when a
pipeline is compiled, never at import. ``pipelines.training.training_pipeline`` is the pipeline
built with the defaults (``$VINSPECT_IMAGE``, the Secret names in :class:`SecretNames`).

Credentials never appear here: the pods get them from Kubernetes Secrets as environment
variables (``use_secret_as_env``), by Secret *name*; locally, from the local stack's
environment.
"""

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vinspect.defaults import EVAL, GATE, TRAIN

PIPELINE_NAME = "vinspect-training"
DEFAULT_ACCELERATOR = "nvidia.com/gpu"
UNCHANGED_DETAIL = (
    "the model passed the gate but is byte-identical to the serving champion "
    "(same data, same parameters): nothing new to register or roll out"
)

# The toleration the NVIDIA GPU operator's taint needs; a runtime parameter so a cluster with
# other taints needs no recompile.
DEFAULT_GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]

# Keys of an OpenShift AI S3 data connection, mapped 1:1 onto the same environment names.
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_S3_ENDPOINT", "AWS_DEFAULT_REGION", "AWS_S3_BUCKET")
# MLflow's endpoint is configuration, not a secret: it comes from the runtime ConfigMap, with how
# to authenticate (MLFLOW_TRACKING_AUTH=kubernetes: the step's own service-account token, read by
# MLflow from the pod's token file on each request, checked by the OAuth proxy in front of MLflow)
# and the CA of the proxy's certificate. Static credentials, for another server, may come from a
# Secret, which may be absent.
MLFLOW_CONFIG_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_AUTH", "MLFLOW_TRACKING_SERVER_CERT_PATH")
# The evaluate and rollout steps announce gate rejections, promotions and rollbacks there.
NOTIFY_CONFIG_KEYS = ("VINSPECT_NOTIFY_URL",)
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
# Token or user/password: whichever keys the CVAT Secret has; CVAT_HOST is the name CVAT's proxy
# routes (the Route host), sent as the Host header to the in-cluster Service URL.
CVAT_KEYS = ("CVAT_URL", "CVAT_HOST", "CVAT_TOKEN", "CVAT_USERNAME", "CVAT_PASSWORD")


@dataclass(frozen=True)
class SecretNames:
    """Names of the Kubernetes Secrets the steps read their endpoints and credentials from.

    The S3 and CVAT defaults are the Secrets ``vinspect infra bootstrap`` creates, the ConfigMap
    is the runtime one of ``infra/manifests``; the MLflow Secret is optional.

    Attributes:
        s3: The S3 data connection (``AWS_*`` keys, as OpenShift AI writes them).
        mlflow: MLflow credentials (``MLFLOW_TRACKING_TOKEN`` or ``_USERNAME``/``_PASSWORD``);
            optional, for servers with auth.
        cvat: CVAT URL and credentials (``CVAT_URL``, ``CVAT_TOKEN`` or ``CVAT_USERNAME``/
            ``CVAT_PASSWORD``); optional, only CVAT pulls need it.
        config: The runtime ConfigMap with ``MLFLOW_TRACKING_URI`` (an endpoint, not a secret).
        model_token: Bearer token for the model's predictor route (``VINSPECT_MODEL_TOKEN``), for
            the rollout's smoke test when OpenShift AI model serving requires token auth; optional.
    """

    s3: str = "aws-connection-models"
    mlflow: str = "vinspect-mlflow"
    cvat: str = "cvat-admin"
    config: str = "vinspect-runtime"
    model_token: str = "vinspect-model-token"


def git_revision() -> str:
    """The source revision the pipeline is compiled from (``$VINSPECT_GIT_REVISION`` or git)."""
    rev = os.environ.get("VINSPECT_GIT_REVISION")
    if rev:
        return rev
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def build_training_pipeline(
    image: str | None = None,
    secrets: SecretNames | None = None,
    *,
    revision: str | None = None,
    accelerator: str = DEFAULT_ACCELERATOR,
    gpus: int = 1,
    caching: bool = True,
):
    """Build the ``training_pipeline`` for one image and one set of Secret names.

    Args:
        image: Component image (default ``$VINSPECT_IMAGE`` or the released image).
        secrets: Secret names (default :class:`SecretNames`).
        revision: Git revision recorded on registered models (default :func:`git_revision`).
        accelerator: Accelerator resource of the train step.
        gpus: Accelerator limit of the train step; 0 compiles a CPU-only train step. A compile
            option, not a run parameter: a resource limit fixed per compiled pipeline is what
            every KFP backend (and ``kfp.local``) handles.
        caching: False compiles every step uncached (scheduled runs, and submits that cannot
            read the data's version). With caching on, the pull's cache key includes the
            ``source_version`` parameter, which the submitter sets from the data itself (S3 ETags,
            CVAT modification dates), so changed annotations are a cache miss. KFP's run-level
            override reaches only top-level tasks, not those inside branches, so this is a
            compile option.

    Returns:
        The ``@dsl.pipeline`` function.
    """
    from kfp import dsl, kubernetes

    from components.kfp import build_components

    ops = build_components(image)
    secrets = secrets or SecretNames()
    revision = git_revision() if revision is None else revision

    def s3_env(task, *, mlflow_artifacts: bool = False):
        kubernetes.use_secret_as_env(task, secrets.s3, {k: k for k in S3_KEYS})
        if mlflow_artifacts:
            # MLflow writes run artifacts straight to the same S3 store.
            kubernetes.use_secret_as_env(task, secrets.s3, {"AWS_S3_ENDPOINT": "MLFLOW_S3_ENDPOINT_URL"})
        return task

    def mlflow_env(task):
        kubernetes.use_config_map_as_env(task, secrets.config, {k: k for k in MLFLOW_CONFIG_KEYS})
        return kubernetes.use_secret_as_env(task, secrets.mlflow, {k: k for k in MLFLOW_SECRET_KEYS}, optional=True)

    def notify_env(task):
        # Where the step's io.vinspect.model.* CloudEvents go (serving/notify.py): the project's
        # Broker ingress from the runtime ConfigMap; without it the events are dropped.
        return kubernetes.use_config_map_as_env(task, secrets.config, {k: k for k in NOTIFY_CONFIG_KEYS})

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Metal-nut defect detector: CVAT -> YOLO -> ONNX -> quality gate -> MLflow/S3 -> KServe.",
    )
    def training_pipeline(
        data_source: str = "",
        data_format: str = "",
        cvat_task_id: int = 0,
        cvat_project_id: int = 0,
        include_all_jobs: bool = False,
        map_labels_by_name: bool = True,
        source_version: str = "",
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        split_seed: int = 0,
        model_name: str = "metal-nut",
        skip_if_unchanged: bool = False,
        model_yaml: str = TRAIN.model,
        init_weights: str = "",
        epochs: int = TRAIN.epochs,
        imgsz: int = TRAIN.imgsz,
        batch: int = TRAIN.batch,
        lr0: float = TRAIN.lr0,
        patience: int = TRAIN.patience,
        seed: int = TRAIN.seed,
        workers: int = 2,
        gpu_tolerations: list = DEFAULT_GPU_TOLERATIONS,
        gpu_node_selector: dict = {},
        opset: int = 17,
        parity_atol: float = 1e-3,
        parity_images: int = 4,
        calibration_images: int = 300,
        variant_tolerance: float = GATE.variant_tolerance,
        eval_conf: float = EVAL.conf,
        eval_iou: float = EVAL.iou,
        min_map50: float = GATE.min_map50,
        min_map50_95: float = GATE.min_map50_95,
        min_class_map50: float = GATE.min_class_map50,
        max_regression: float = GATE.max_regression,
        allow_missing_champion: bool = GATE.allow_missing_champion,
        serving_mode: str = "raw",
        serving_namespace: str = "vinspect-models",
        inference_service: str = "",
        data_connection: str = secrets.s3,
        smoke_images: int = 3,
        smoke_min_classes: int = -1,
        smoke_conf: float = 0.1,
        rollout_timeout_s: float = 600.0,
        git_revision: str = revision,
    ):
        """Train, evaluate, gate, register and roll out the defect detector."""
        pull = ops.pull_annotations(
            source=data_source,
            data_format=data_format,
            cvat_task_id=cvat_task_id,
            cvat_project_id=cvat_project_id,
            include_all_jobs=include_all_jobs,
            source_version=source_version,
            map_by_name=map_labels_by_name,
        ).set_display_name("pull-annotations")
        pull.set_caching_options(caching)
        s3_env(pull)
        kubernetes.use_secret_as_env(pull, secrets.cvat, {k: k for k in CVAT_KEYS}, optional=True)

        split = ops.validate_and_split(
            raw_dataset=pull.outputs["raw_dataset"],
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            split_seed=split_seed,
        ).set_display_name("validate-and-split")
        split.set_caching_options(caching)

        check = ops.check_dataset(
            dataset_id=split.outputs["dataset_id"], model_name=model_name, skip_if_unchanged=skip_if_unchanged
        ).set_display_name("check-dataset")
        check.set_caching_options(False)
        mlflow_env(check)

        with dsl.If(check.outputs["action"] == "train", name="dataset-changed"):
            train = ops.train(
                dataset=split.outputs["dataset"],
                model_yaml=model_yaml,
                init_weights=init_weights,
                epochs=epochs,
                imgsz=imgsz,
                batch=batch,
                lr0=lr0,
                patience=patience,
                seed=seed,
                workers=workers,
            ).set_display_name("train")
            train.set_caching_options(caching)
            if gpus > 0:
                train.set_accelerator_type(accelerator).set_accelerator_limit(gpus)
            kubernetes.add_toleration_json(train, gpu_tolerations)
            kubernetes.add_node_selector_json(train, gpu_node_selector)
            # Data-loader workers exchange batches through /dev/shm; a container's default is 64 MiB.
            kubernetes.empty_dir_mount(train, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
            s3_env(train)

            export = ops.export_onnx(
                weights=train.outputs["weights"],
                dataset=split.outputs["dataset"],
                imgsz=imgsz,
                opset=opset,
                parity_atol=parity_atol,
                parity_images=parity_images,
                calibration_images=calibration_images,
            ).set_display_name("export-onnx")
            export.set_caching_options(caching)

            evaluate = ops.evaluate(
                onnx_model=export.outputs["onnx_model"],
                dataset=split.outputs["dataset"],
                conf=eval_conf,
                iou=eval_iou,
                min_map50=min_map50,
                min_map50_95=min_map50_95,
                min_class_map50=min_class_map50,
                max_regression=max_regression,
                model_name=model_name,
                champion_version=check.outputs["champion_version"],
                allow_missing_champion=allow_missing_champion,
                variants=export.outputs["variants"],
                variant_tolerance=variant_tolerance,
            ).set_display_name("evaluate")
            evaluate.set_caching_options(caching)
            # On new data the champion's ONNX is read from S3 and re-evaluated on this split.
            s3_env(evaluate)
            mlflow_env(evaluate)
            notify_env(evaluate)  # a rejected gate is announced from here

            with dsl.If(evaluate.outputs["gate"] == "passed", name="gate-passed"):
                # A re-run that reproduced the serving model byte for byte has nothing to add.
                changed = export.outputs["onnx_sha256"] != check.outputs["champion_sha256"]
                with dsl.If(changed, name="model-changed"):
                    register = ops.register(
                        onnx_model=export.outputs["onnx_model"],
                        dataset=split.outputs["dataset"],
                        train_report=train.outputs["train_report"],
                        eval_report=evaluate.outputs["eval_report"],
                        model_name=model_name,
                        opset=opset,
                        git_revision=git_revision,
                        pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                        variants=export.outputs["variants"],
                    ).set_display_name("register")
                    register.set_caching_options(False)
                    s3_env(register, mlflow_artifacts=True)
                    mlflow_env(register)

                    deploy = ops.rollout(
                        dataset=split.outputs["dataset"],
                        model_name=model_name,
                        version=register.outputs["version"],
                        storage_uri=register.outputs["storage_uri"],
                        serving_mode=serving_mode,
                        namespace=serving_namespace,
                        inference_service=inference_service,
                        data_connection=data_connection,
                        smoke_images=smoke_images,
                        smoke_min_classes=smoke_min_classes,
                        smoke_conf=smoke_conf,
                        timeout_s=rollout_timeout_s,
                    ).set_display_name("rollout")
                    deploy.set_caching_options(False)
                    s3_env(deploy)
                    mlflow_env(deploy)
                    notify_env(deploy)  # promoted / rolled back
                    kubernetes.use_secret_as_env(
                        deploy,
                        secrets.model_token,
                        {"token": "VINSPECT_MODEL_TOKEN"},
                        optional=True,
                    )
                    # The smoke test calls the model where the image processor will: the URL and
                    # model name of the processor's own ConfigMap (issue 13, defect 2).
                    kubernetes.use_config_map_as_env(
                        deploy,
                        secrets.config,
                        {
                            "VINSPECT_MODEL_URL": "VINSPECT_PROCESSOR_MODEL_URL",
                            "VINSPECT_MODEL_NAME": "VINSPECT_PROCESSOR_MODEL_NAME",
                        },
                    )

                with dsl.Else(name="model-unchanged"):
                    ops.report_outcome(
                        outcome="unchanged",
                        detail=UNCHANGED_DETAIL,
                        dataset_id=split.outputs["dataset_id"],
                    ).set_display_name("model-unchanged").set_caching_options(False)

            with dsl.Else(name="gate-rejected"):
                ops.report_outcome(
                    outcome="rejected",
                    detail=evaluate.outputs["reasons"],
                    dataset_id=split.outputs["dataset_id"],
                ).set_display_name("gate-rejected").set_caching_options(False)

        with dsl.Else(name="dataset-unchanged"):
            ops.report_outcome(
                outcome="skipped",
                detail=check.outputs["reason"],
                dataset_id=split.outputs["dataset_id"],
            ).set_display_name("training-skipped").set_caching_options(False)

    return training_pipeline


def __getattr__(name: str):
    # `training_pipeline` is built on first access (image and Secret names read then, not at import).
    if name == "training_pipeline":
        return build_training_pipeline()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
