"""The feedback loop's manifests: monitoring, alerts, the review push, retraining on drift (issue 15).

Validated like every other manifest (upstream schemas, subsets in infra/schemas for the
prometheus-operator kinds), and checked against the code they run: alert expressions read only
metrics (and labels) that serving/metrics.py defines; the jobs run commands the CLI has.
"""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from infra.validate import find_literal_credentials, validate_objects
from serving.metrics import exposed_names, metric_labels
from tests.infra.conftest import find
from vinspect.cli import app

METRIC = re.compile(r"\b(vinspect_[a-z0-9_]+)\b(\{([^}]*)\})?")
BY = re.compile(r"\bby\s*\(([^)]*)\)")


@pytest.fixture(scope="module")
def loop(rendered):
    return rendered["loop"]


@pytest.mark.parametrize("overlay", ["loop", "retrain-on-drift"])
def test_loop_overlays_validate_and_carry_no_credential(rendered, store, overlay):
    objects = rendered[overlay]
    assert validate_objects(objects, store) == []
    assert find_literal_credentials(objects) == []


def test_loop_overlay_adds_monitoring_and_the_review_push_to_the_default(rendered, loop):
    default = {(o["kind"], o["metadata"]["name"]) for o in rendered["default"]}
    added = {(o["kind"], o["metadata"]["name"]) for o in loop} - default
    assert added == {
        ("PodMonitor", "image-processor"),
        ("PrometheusRule", "vinspect-runtime"),
        ("CronJob", "review-push"),
    }


def test_retraining_on_drift_is_off_unless_its_overlay_is_applied(rendered):
    for overlay in ("default", "loop", "gpu", "sno"):
        assert not any(o["metadata"]["name"] == "retrain-on-drift" for o in rendered[overlay]), overlay
    objects = rendered["retrain-on-drift"]
    trigger = find(objects, "Trigger", "retrain-on-drift")["spec"]
    assert trigger["filter"]["attributes"] == {"type": "io.vinspect.model.drift.detected"}
    svc = find(objects, "Service", "retrain-on-drift", "serving.knative.dev")
    assert trigger["subscriber"]["ref"] == {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "name": svc["metadata"]["name"],
    }
    container = svc["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["vinspect", "retrain", "serve"]
    assert svc["spec"]["template"]["spec"]["serviceAccountName"] == "retrain-on-drift"
    role = find(objects, "Role", "retrain-on-drift")
    dspa = find(objects, "DataSciencePipelinesApplication", "dspa")
    assert role["rules"][0]["resourceNames"] == [dspa["metadata"]["name"]]


def test_event_type_of_the_trigger_is_the_one_notify_emits(rendered):
    from serving.notify import DRIFT_DETECTED

    trigger = find(rendered["retrain-on-drift"], "Trigger", "retrain-on-drift")
    assert trigger["spec"]["filter"]["attributes"]["type"] == DRIFT_DETECTED


def test_alerts_cover_the_issue_and_read_only_defined_metrics_and_labels(loop):
    rule = find(loop, "PrometheusRule", "vinspect-runtime")
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(rules) == {
        "VinspectDefectRateSpike",
        "VinspectDriftHigh",
        "VinspectDeadLettersGrowing",
        "VinspectModelErrors",
        "VinspectNoImages",
    }
    names = exposed_names()
    labels = {name: set(keys) for name, keys in metric_labels().items()}
    for alert, r in rules.items():
        expr = r["expr"]
        used = METRIC.findall(expr)
        assert used, f"{alert} reads no vinspect metric"
        expr_labels = set()
        for name, _, selector in used:
            assert name in names, f"{alert} reads {name}, which serving/metrics.py does not define"
            family = re.sub(r"_(total|bucket|sum|count|created)$", "", name)
            expr_labels |= labels[family]
            for key in re.findall(r"([a-z_]+)\s*=~?", selector):
                assert key in labels[family], f"{alert}: {name} has no label {key!r}"
        for group in BY.findall(expr):
            for key in (k.strip() for k in group.split(",") if k.strip()):
                assert key in expr_labels, f"{alert} aggregates by {key!r}, which its metrics lack"
        assert r["annotations"]["summary"] and r["labels"]["severity"] in ("warning", "critical")


def test_a_misspelt_metric_would_be_caught():
    assert "vinspect_image_total" not in exposed_names()


def test_pod_monitor_selects_the_processor_pods_on_their_knative_port(loop):
    pm = find(loop, "PodMonitor", "image-processor")["spec"]
    svc = find(loop, "Service", "image-processor", "serving.knative.dev")
    pod_labels = svc["spec"]["template"]["metadata"]["labels"]
    assert pm["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pm["podMetricsEndpoints"] == [
        {"port": "user-port", "path": "/metrics", "scheme": "http", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    assert find(loop, "NetworkPolicy", "allow-from-monitoring"), "the monitoring stack may reach the pods"


def test_review_push_cronjob_runs_the_cli_with_generated_secrets(loop):
    cron = find(loop, "CronJob", "review-push")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"][:3] == ["vinspect", "review", "push"]
    r = CliRunner().invoke(app, [*container["command"][1:], "--help"])
    assert r.exit_code == 0, r.output  # every flag the job passes exists
    refs = [(kind, ref["name"]) for entry in container["envFrom"] for kind, ref in entry.items()]
    # S3 from the review push's own Minio user (env, tests/infra/test_loop_wiring.py), not from
    # the models bucket's data connection.
    assert refs == [("configMapRef", "vinspect-runtime"), ("secretRef", "cvat-admin")]
    from infra.bootstrap import CVAT_SECRET

    assert CVAT_SECRET == "cvat-admin"
    assert find(loop, "ConfigMap", "vinspect-runtime")["data"]["VINSPECT_DATA_BUCKET"]
