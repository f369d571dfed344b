"""The compiled pipeline: task order, branches, GPU settings, secrets, caching, no credentials."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from tests.pipeline import ir

ORDER = [
    "pull-annotations",
    "validate-and-split",
    "check-dataset",
    "train",
    "export-onnx",
    "evaluate",
    "register",
    "rollout",
]
CACHED = {"pull-annotations", "validate-and-split", "train", "export-onnx", "evaluate"}
UNCACHED = {"check-dataset", "register", "rollout", "report-outcome", "report-outcome-2", "report-outcome-3"}
CREDENTIAL_WORDS = re.compile(r"pass(word|wd)?|secret|token|credential|access_?key|api_?key|auth", re.I)
IMAGE = "registry.example.com/team/vinspect-pipeline:test"


@pytest.fixture(scope="module")
def fake_credentials():
    """Credentials that look real (made up per run); present in the environment while compiling."""
    from secrets import token_hex

    return {
        "AWS_ACCESS_KEY_ID": "AKIA" + token_hex(8).upper(),
        "AWS_SECRET_ACCESS_KEY": token_hex(20),
        "MLFLOW_TRACKING_TOKEN": "mlflow-" + token_hex(8),
        "CVAT_TOKEN": "cvat-" + token_hex(8),
        "KFP_TOKEN": "sha256~" + token_hex(12),
        "CVAT_PASSWORD": token_hex(10),
    }


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, fake_credentials):
    """The pipeline compiled with the default GPU settings, credentials set in the environment."""
    from pipelines.compile import compile_pipeline

    mp = pytest.MonkeyPatch()
    for key, value in fake_credentials.items():
        mp.setenv(key, value)
    mp.setenv("VINSPECT_IMAGE", IMAGE)
    try:
        path = compile_pipeline(tmp_path_factory.mktemp("ir") / "training.yaml")
    finally:
        mp.undo()
    doc = ir.load(path)
    return {"path": path, "text": path.read_text(), **doc, "tasks": ir.tasks(doc["spec"])}


def test_task_order_follows_the_design(compiled):
    tasks = compiled["tasks"]
    for name in ORDER:
        assert name in tasks, f"task {name} missing from the compiled pipeline"
    for before, after in zip(ORDER, ORDER[1:]):
        assert before in ir.upstream_closure(tasks, after), f"{after} does not wait for {before}"
    # Nothing runs before the data is pulled.
    for name in tasks:
        if name != "pull-annotations":
            assert "pull-annotations" in ir.upstream_closure(tasks, name), name


def test_training_and_deployment_sit_in_the_right_branches(compiled):
    spec, tasks = compiled["spec"], compiled["tasks"]
    for name in ("train", "export-onnx", "evaluate"):
        conds = ir.enclosing_conditions(spec, tasks, name)
        assert len(conds) == 1 and "check-dataset-action" in conds[0] and "'train'" in conds[0], (name, conds)
    for name in ("register", "rollout"):
        conds = ir.enclosing_conditions(spec, tasks, name)
        assert len(conds) == 3, (name, conds)
        # Innermost: the model differs from the serving champion; then the gate; then new data.
        assert "export-onnx-onnx_sha256" in conds[0] and "check-dataset-champion_sha256" in conds[0]
        assert "!=" in conds[0], conds[0]
        assert "evaluate-gate" in conds[1] and "'passed'" in conds[1], (name, conds)
        assert "check-dataset-action" in conds[2]
    # The "nothing deployed" ends: gate rejected, identical model, data unchanged.
    ends = [t for t in tasks.values() if t.component.startswith("comp-report-outcome")]
    outcomes = {t.spec["inputs"]["parameters"]["outcome"]["runtimeValue"]["constant"]: t.name for t in ends}
    assert set(outcomes) == {"rejected", "skipped", "unchanged"}
    rejected = ir.enclosing_conditions(spec, tasks, outcomes["rejected"])
    assert "evaluate-gate" in rejected[0] and rejected[0].startswith("!"), rejected
    unchanged = ir.enclosing_conditions(spec, tasks, outcomes["unchanged"])
    assert unchanged[0].startswith("!") and "onnx_sha256" in unchanged[0] and "'passed'" in unchanged[1]
    skipped = ir.enclosing_conditions(spec, tasks, outcomes["skipped"])
    assert len(skipped) == 1 and "check-dataset-action" in skipped[0]


def test_gpu_settings_on_train_and_nowhere_else(compiled):
    spec, platform, tasks = compiled["spec"], compiled["platform"], compiled["tasks"]
    executors = spec["deploymentSpec"]["executors"]
    train_exec = ir.executor_of(spec, tasks["train"])
    for label, ex in executors.items():
        accel = ex["container"].get("resources", {}).get("accelerator")
        if label == train_exec:
            # KFP writes both the current and the deprecated field names.
            assert accel and accel.get("resourceType", accel.get("type")) == "nvidia.com/gpu", accel
            assert str(accel.get("resourceCount", accel.get("count"))) == "1", accel
        else:
            assert accel is None, f"{label} asks for an accelerator"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train = k8s[train_exec]
    assert train["tolerations"] == [{"tolerationJson": {"componentInputParameter": "pipelinechannel--gpu_tolerations"}}]
    assert train["nodeSelector"] == {
        "nodeSelectorJson": {"componentInputParameter": "pipelinechannel--gpu_node_selector"}
    }
    assert {"medium": "Memory", "mountPath": "/dev/shm", "volumeName": "dshm"}.items() <= train["emptyDirMounts"][
        0
    ].items()
    for label, cfg in k8s.items():
        if label != train_exec:
            assert not {"tolerations", "nodeSelector", "emptyDirMounts"} & set(cfg), f"{label}: {sorted(cfg)}"
    # The default toleration is the GPU operator's taint, and it is a runtime parameter.
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["gpu_tolerations"]["defaultValue"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert params["gpu_tolerations"]["parameterType"] == "LIST"
    assert params["gpu_node_selector"]["parameterType"] == "STRUCT"


def test_cpu_only_compile_has_no_accelerator(tmp_path):
    from pipelines.compile import compile_pipeline

    doc = ir.load(compile_pipeline(tmp_path / "cpu.yaml", gpus=0))
    for ex in doc["spec"]["deploymentSpec"]["executors"].values():
        assert "accelerator" not in ex["container"].get("resources", {})


def _env_refs(k8s_exec: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for ref in k8s_exec.get("secretAsEnv", []):
        out.setdefault(ref["secretName"], set()).update(m["envVar"] for m in ref["keyToEnv"])
    for ref in k8s_exec.get("configMapAsEnv", []):
        out.setdefault(f"configmap/{ref['configMapName']}", set()).update(m["envVar"] for m in ref["keyToEnv"])
    return out


def _optional(k8s_exec: dict, secret: str) -> list[bool]:
    return [r.get("optional", False) for r in k8s_exec.get("secretAsEnv", []) if r["secretName"] == secret]


def test_secrets_reach_steps_as_env_by_name(compiled):
    spec, platform, tasks = compiled["spec"], compiled["platform"], compiled["tasks"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    s3 = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_S3_ENDPOINT", "AWS_DEFAULT_REGION", "AWS_S3_BUCKET"}
    # Endpoint, auth mode (the step's service-account token) and the proxy's CA from the ConfigMap.
    mlflow = {
        "configmap/vinspect-runtime": {
            "MLFLOW_TRACKING_URI",
            "MLFLOW_TRACKING_AUTH",
            "MLFLOW_TRACKING_SERVER_CERT_PATH",
        },
        "vinspect-mlflow": {"MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"},
    }
    # Gate rejections (evaluate), promotions and rollbacks (rollout) go to the Broker's ingress.
    notify = {"VINSPECT_NOTIFY_URL"}
    expected = {
        "pull-annotations": {
            "aws-connection-models": s3,
            "cvat-admin": {"CVAT_URL", "CVAT_HOST", "CVAT_TOKEN", "CVAT_USERNAME", "CVAT_PASSWORD"},
        },
        "check-dataset": mlflow,
        "train": {"aws-connection-models": s3},
        "register": {"aws-connection-models": s3 | {"MLFLOW_S3_ENDPOINT_URL"}, **mlflow},
        # The smoke test calls the model where the processor will: its ConfigMap's URL and name.
        "rollout": {
            "aws-connection-models": s3,
            **mlflow,
            "vinspect-model-token": {"VINSPECT_MODEL_TOKEN"},
            "configmap/vinspect-runtime": mlflow["configmap/vinspect-runtime"]
            | notify
            | {"VINSPECT_PROCESSOR_MODEL_URL", "VINSPECT_PROCESSOR_MODEL_NAME"},
        },
        "validate-and-split": {},
        "export-onnx": {},
        # The champion's ONNX is read from S3 and its version from MLflow to re-evaluate it.
        "evaluate": {
            "aws-connection-models": s3,
            **mlflow,
            "configmap/vinspect-runtime": mlflow["configmap/vinspect-runtime"] | notify,
        },
    }
    for name, want in expected.items():
        got = _env_refs(k8s.get(ir.executor_of(spec, tasks[name]), {}))
        assert got == want, f"{name}: {got}"
    # The S3 data connection is required; CVAT (only CVAT pulls) and MLflow credentials (only
    # servers with auth) may be absent without blocking a run.
    pull = k8s[ir.executor_of(spec, tasks["pull-annotations"])]
    assert _optional(pull, "cvat-admin") == [True] and _optional(pull, "aws-connection-models") == [False]
    assert _optional(k8s[ir.executor_of(spec, tasks["register"])], "vinspect-mlflow") == [True]
    assert _optional(k8s[ir.executor_of(spec, tasks["rollout"])], "vinspect-model-token") == [True]
    # The rollout's model server reads S3 through the same data connection, by name.
    assert spec["root"]["inputDefinitions"]["parameters"]["data_connection"]["defaultValue"] == "aws-connection-models"


def test_secret_names_are_configurable(tmp_path):
    from pipelines.compile import compile_pipeline
    from pipelines.training import SecretNames

    names = SecretNames(s3="aws-connection-minio", mlflow="mlflow-auth", cvat="cvat-bot", config="endpoints")
    text = compile_pipeline(tmp_path / "p.yaml", secrets=names).read_text()
    for name in (
        "secretName: aws-connection-minio",
        "secretName: mlflow-auth",
        "secretName: cvat-bot",
        "configMapName: endpoints",
    ):
        assert name in text
    assert "aws-connection-models" not in text


def test_no_credential_parameters_or_values(compiled, fake_credentials):
    params = compiled["spec"]["root"]["inputDefinitions"]["parameters"]
    assert "data_source" in params and "epochs" in params  # the table really is the pipeline's
    for name, p in params.items():
        assert not CREDENTIAL_WORDS.search(name), f"parameter {name!r} looks like a credential"
        default = str(p.get("defaultValue", ""))
        assert not CREDENTIAL_WORDS.search(default), f"default of {name!r} looks like a credential: {default}"
    for value in fake_credentials.values():
        assert value not in compiled["text"], "a credential from the environment leaked into the YAML"


def test_caching_per_step(compiled):
    for task in compiled["tasks"].values():
        if task.component.startswith("comp-condition"):
            continue
        enabled = task.spec.get("cachingOptions", {}).get("enableCache", False)
        if task.name in CACHED:
            assert enabled, f"{task.name} should be cached"
        else:
            assert task.name in UNCACHED and not enabled, f"{task.name} should not be cached"


def test_one_image_nothing_installed_at_run_time(compiled):
    for label, ex in compiled["spec"]["deploymentSpec"]["executors"].items():
        container = ex["container"]
        assert container["image"] == IMAGE, label
        command = " ".join(container.get("command", []) + container.get("args", []))
        assert "pip install" not in command, f"{label} installs packages at run time"


def test_cli_compile_writes_the_ir(tmp_path, monkeypatch):
    from vinspect.cli import app

    monkeypatch.setenv("VINSPECT_IMAGE", IMAGE)
    out = tmp_path / "sub" / "pipeline.yaml"
    result = CliRunner().invoke(
        app, ["pipeline", "compile", "--out", str(out), "--gpus", "0", "--s3-secret", "my-data-connection"]
    )
    assert result.exit_code == 0, result.output
    doc = ir.load(out)
    assert doc["spec"]["pipelineInfo"]["name"] == "vinspect-training"
    assert "secretName: my-data-connection" in out.read_text()
    assert not list(out.parent.glob(".*tmp*")), "a temporary file was left behind"


def test_module_level_pipeline_reads_the_image_when_built(monkeypatch):
    monkeypatch.setenv("VINSPECT_IMAGE", "example.org/a:1")
    from pipelines.training import training_pipeline as first

    monkeypatch.setenv("VINSPECT_IMAGE", "example.org/b:2")
    from pipelines.training import training_pipeline as second

    images = [
        {ex["container"]["image"] for ex in p.pipeline_spec.deployment_spec["executors"].values()}
        for p in (first, second)
    ]
    assert images == [{"example.org/a:1"}, {"example.org/b:2"}]
    assert first.name == "vinspect-training"
