"""The processor's metric definitions: recorded from results, exposed over real HTTP."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from serving.metrics import InspectionMetrics, exposed_names, serve_metrics

RESULT = {
    "camera": "cam-1",
    "verdict": "fail",
    "detections": [{"class_name": "scratch", "score": 0.35}, {"class_name": "bent", "score": 0.92}],
    "timings_ms": {"decode": 2.0, "inference": 18.0, "total": 25.0, "unknown_stage": 1.0},
    "model": {"name": "metal-nut", "version": "4"},
}


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_a_result_is_counted_by_camera_class_and_stage():
    m = InspectionMetrics()
    m.record_result(RESULT, now=1000.0)
    m.record_result({**RESULT, "verdict": "pass", "detections": []}, now=1001.0)
    s = _samples(m.render()[0].decode())
    assert s[("vinspect_images_total", (("camera", "cam-1"),))] == 2
    assert s[("vinspect_verdicts_total", (("camera", "cam-1"), ("verdict", "fail")))] == 1
    assert s[("vinspect_verdicts_total", (("camera", "cam-1"), ("verdict", "pass")))] == 1
    assert s[("vinspect_detections_total", (("camera", "cam-1"), ("class_name", "bent")))] == 1
    assert (
        s[("vinspect_detection_confidence_bucket", (("camera", "cam-1"), ("class_name", "scratch"), ("le", "0.4")))]
        == 1
    )
    assert (
        s[("vinspect_detection_confidence_bucket", (("camera", "cam-1"), ("class_name", "scratch"), ("le", "0.3")))]
        == 0
    )
    assert s[("vinspect_stage_seconds_sum", (("stage", "inference"),))] == 0.036
    assert not any(k[0].startswith("vinspect_stage") and ("stage", "unknown_stage") in k[1] for k in s)
    assert s[("vinspect_model_info", (("model", "metal-nut"), ("version", "4")))] == 1
    assert s[("vinspect_last_image_timestamp_seconds", (("camera", "cam-1"),))] == 1001.0


def test_a_new_model_version_replaces_the_info_series():
    m = InspectionMetrics()
    m.set_model("metal-nut", "4")
    m.set_model("metal-nut", "5")
    s = _samples(m.render()[0].decode())
    assert ("vinspect_model_info", (("model", "metal-nut"), ("version", "4"))) not in s
    assert s[("vinspect_model_info", (("model", "metal-nut"), ("version", "5")))] == 1


def test_errors_dead_letters_review_and_drift():
    m = InspectionMetrics()
    m.record_error("model_unavailable")
    m.record_dead_letter("poison")
    m.record_review("cam-2", ["uncertain", "audit"], queue_size=7)
    m.record_drift("cam-2", {"brightness": {"psi": 0.31, "ks": 0.4, "n": 80}})
    s = _samples(m.render()[0].decode())
    assert s[("vinspect_errors_total", (("kind", "model_unavailable"),))] == 1
    assert s[("vinspect_dead_letters_total", (("reason", "poison"),))] == 1
    assert s[("vinspect_review_selected_total", (("camera", "cam-2"), ("reason", "audit")))] == 1
    assert s[("vinspect_review_queue_size", ())] == 7
    assert s[("vinspect_drift_score", (("camera", "cam-2"), ("method", "psi"), ("signal", "brightness")))] == 0.31


def test_registries_are_private():
    a, b = InspectionMetrics(), InspectionMetrics()
    a.record_error("x")
    assert 'kind="x"' in a.render()[0].decode() and 'kind="x"' not in b.render()[0].decode()


def test_metrics_are_served_over_http():
    m = InspectionMetrics()
    m.record_result(RESULT)
    server, thread = serve_metrics(m, 0, addr="127.0.0.1")
    try:
        port = server.server_address[1]
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert 'vinspect_images_total{camera="cam-1"} 1.0' in r.text
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_exposed_names_cover_series_suffixes():
    names = exposed_names()
    assert {
        "vinspect_images_total",
        "vinspect_detection_confidence_bucket",
        "vinspect_drift_score",
        "vinspect_dead_letters_total",
        "vinspect_review_queue_size",
    } <= names
