"""Golden images from the validation split, the per-class smoke rule, and the rollout step using them.

The tiny constant-output models of ``tiny_model`` "detect" what each test asks, so the rule is
checked through the real model server and the real v2 + detector path, without training.
"""

from __future__ import annotations

import json
import ssl
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from components.data.manifest import SCHEMA
from components.rollout.smoke import GoldenImage, SmokeTestError, golden_from_split, make_v2_smoke
from tests.registry.tiny_model import BENT_IN_THE_MIDDLE, build_tiny_onnx

CLASSES = ["scratch", "bent"]
SCRATCH_IN_THE_MIDDLE = [(0, 0.9, 32.0, 32.0, 20.0, 20.0)]
BOTH = [(1, 0.9, 20.0, 20.0, 12.0, 12.0), (0, 0.8, 44.0, 44.0, 12.0, 12.0)]
# A weak model: it sees the scratch, but only at a low score.
FAINT_SCRATCH = [(1, 0.9, 20.0, 20.0, 12.0, 12.0), (0, 0.15, 44.0, 44.0, 12.0, 12.0)]


def _dataset(root: Path, labels: dict[str, list[int] | None]) -> Path:
    """A vinspect dataset folder whose val split has one image per entry (None: no label file)."""
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for i, (stem, classes) in enumerate(labels.items()):
        Image.fromarray(np.full((48, 64, 3), 40 + 10 * i, dtype=np.uint8)).save(root / "images" / "val" / f"{stem}.png")
        if classes is not None:
            rows = [f"{c} 0.5 0.5 0.2 0.2" for c in classes]
            (root / "labels" / "val" / f"{stem}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))
    (root / "manifest.json").write_text(json.dumps({"schema": SCHEMA, "classes": CLASSES}))
    return root


def golden_dataset(root: Path) -> Path:
    """A dataset whose validation images cover each smoke-test case (bent, both, good, scratch)."""
    return _dataset(
        root,
        {
            "a_bent": [1],
            "b_both": [0, 1, 1],
            "c_good": None,
            "c_good_empty": [],
            "d_scratch": [0],
            "e_bent": [1],
        },
    )


@pytest.fixture
def dataset(tmp_path) -> Path:
    return golden_dataset(tmp_path / "ds")


def _names(golden):
    return [(g.path.name, sorted(g.expected)) for g in golden]


def test_golden_images_are_the_first_per_class_with_their_label_classes(dataset):
    assert _names(golden_from_split(dataset, CLASSES, per_class=1)) == [
        ("a_bent.png", ["bent"]),
        ("b_both.png", ["bent", "scratch"]),
    ]
    assert _names(golden_from_split(dataset, CLASSES, per_class=2)) == [
        ("a_bent.png", ["bent"]),
        ("b_both.png", ["bent", "scratch"]),
        ("d_scratch.png", ["scratch"]),
    ]
    assert len(golden_from_split(dataset, CLASSES, per_class=10)) == 4  # never an image without boxes


def test_golden_images_name_a_bad_label_file(tmp_path):
    ds = _dataset(tmp_path / "bad", {"a": [1], "b": [7]})
    with pytest.raises(ValueError, match=r"b\.txt:1: class id 7"):
        golden_from_split(ds, CLASSES, per_class=5)
    empty = _dataset(tmp_path / "empty", {"a": None, "b": []})
    assert golden_from_split(empty, CLASSES) == []


@pytest.fixture
def served(tmp_path):
    """``served(detections) -> (client, name)``: the model server in-process with a tiny model loaded."""
    from fastapi.testclient import TestClient

    from serving.modelserver import ModelRepository, create_app

    def _fail():
        raise AssertionError("no S3 in these tests")

    app = create_app(
        ModelRepository(_fail), load_on_startup=False, token="smoke-test-token", model_roots=[str(tmp_path)]
    )
    with TestClient(app, headers={"Authorization": "Bearer smoke-test-token"}) as client:

        def _serve(detections):
            name = f"rule-{uuid.uuid4().hex[:6]}"
            path = build_tiny_onnx(tmp_path / f"{name}.onnx", detections, tag=name)
            resp = client.post(
                f"/v2/repository/models/{name}/load", json={"parameters": {"uri": str(path), "version": "1"}}
            )
            assert resp.status_code == 200, resp.text
            return client, name

        yield _serve


def _smoke(golden, client, model, **kw):
    return make_v2_smoke(golden, client=client, names=CLASSES, conf=0.1, **kw)("http://testserver", model)


def test_every_class_must_be_found_on_an_image_that_shows_it(dataset, served):
    golden = golden_from_split(dataset, CLASSES, per_class=2)
    client, both = served(BOTH)
    report = _smoke(golden, client, both, min_classes=-1)
    assert report["classes"] == {"expected": ["bent", "scratch"], "found": ["bent", "scratch"], "required": 2}
    assert [r["found"] for r in report["images"]] == [["bent", "scratch"]] * 3

    client, bent_only = served(BENT_IN_THE_MIDDLE)
    with pytest.raises(SmokeTestError, match=r"found 1 of the 2 expected classes \['bent', 'scratch'\].*2 required"):
        _smoke(golden, client, bent_only, min_classes=-1)
    # More than there are means all of them; fewer is a weaker rule the bent-only model meets.
    with pytest.raises(SmokeTestError, match="found 1 of the 2"):
        _smoke(golden, client, bent_only, min_classes=5)
    assert _smoke(golden, client, bent_only, min_classes=1)["classes"]["found"] == ["bent"]


def test_a_weak_model_passes_at_the_low_threshold_only(dataset, served):
    golden = golden_from_split(dataset, CLASSES, per_class=2)
    client, weak = served(FAINT_SCRATCH)
    assert _smoke(golden, client, weak, min_classes=-1)["classes"]["found"] == ["bent", "scratch"]
    with pytest.raises(SmokeTestError, match="found 1 of the 2 .* at conf 0.25"):
        make_v2_smoke(golden, client=client, names=CLASSES, conf=0.25, min_classes=-1)("http://testserver", weak)


def test_a_class_detected_on_the_wrong_image_does_not_count(dataset, served):
    golden = [g for g in golden_from_split(dataset, CLASSES, per_class=2) if g.expected == {"scratch"}]
    client, bent_only = served(BENT_IN_THE_MIDDLE)
    with pytest.raises(SmokeTestError, match=r"d_scratch.png: expected \['scratch'\], found \['bent'\]"):
        _smoke(golden, client, bent_only, min_classes=1)


def test_rule_zero_only_needs_well_formed_answers(dataset, served):
    golden = golden_from_split(dataset, CLASSES, per_class=1)
    client, blind = served([])
    report = _smoke(golden, client, blind, min_classes=0)
    assert report["classes"]["found"] == [] and len(report["images"]) == 2
    with pytest.raises(SmokeTestError, match="found nothing"):
        _smoke(golden, client, blind, min_classes=1)
    # The server still has to answer: an unknown model fails even with rule 0.
    with pytest.raises(SmokeTestError, match="HTTP 404"):
        _smoke(golden, client, "not-loaded", min_classes=0)


def test_tls_verification_is_never_switched_off(dataset):
    with pytest.raises(ValueError, match="TLS verification stays on"):
        make_v2_smoke([GoldenImage(dataset / "images" / "val" / "a_bent.png")], verify=False)


def _ca_pem(tmp_path: Path) -> Path:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openshift-service-serving-signer-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "service-ca.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _subjects(ctx: ssl.SSLContext) -> set[str]:
    return {v for c in ctx.get_ca_certs() for rdn in c["subject"] for k, v in rdn if k == "commonName"}


def test_cluster_tls_trusts_the_service_ca_when_mounted(tmp_path):
    from components.rollout.smoke import cluster_tls_verify

    ca = _ca_pem(tmp_path)
    ctx = cluster_tls_verify(ca)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert "openshift-service-serving-signer-test" in _subjects(ctx)
    plain = cluster_tls_verify(tmp_path / "absent.crt")
    assert plain.verify_mode == ssl.CERT_REQUIRED and "openshift-service-serving-signer-test" not in _subjects(plain)


def test_raw_rollout_smoke_gets_the_service_ca_the_token_and_the_dataset_classes(dataset, tmp_path, monkeypatch):
    """The KServe branch of the step: what it hands the smoke test (the cluster is faked)."""
    import components.rollout.deploy
    import components.rollout.smoke
    from components.kfp.rollout import rollout
    from components.rollout import Rollout

    ca = _ca_pem(tmp_path)
    monkeypatch.setattr(components.rollout.smoke, "SERVICE_CA", ca)
    monkeypatch.setenv("VINSPECT_MODEL_TOKEN", "model-token")
    monkeypatch.delenv("VINSPECT_MODEL_CA_BUNDLE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # never called: the rollout is faked
    monkeypatch.setattr("infra.kube.connect", lambda **kw: object())
    seen = {}

    def fake_smoke(golden, **kw):
        seen.update(kw, golden=golden)
        return lambda url, model: {}

    monkeypatch.setattr(components.rollout.smoke, "make_v2_smoke", fake_smoke)
    monkeypatch.setattr(
        components.rollout.deploy,
        "roll_out",
        lambda *a, **kw: Rollout(
            status="deployed", target="kserve", service="m", version="3", url="https://m-predictor.ns.svc:8443"
        ),
    )
    out = rollout(
        SimpleNamespace(path=str(dataset)),
        model_name="m",
        version="3",
        storage_uri="s3://b/m/3/",
        serving_mode="raw",
        namespace="ns",
        inference_service="",
        data_connection="dc",
        smoke_images=1,
        timeout_s=5,
        smoke_min_classes=-1,
        smoke_conf=0.1,
    )
    assert out.status == "deployed"
    assert seen["token"] == "model-token" and seen["min_classes"] == -1 and seen["names"] == CLASSES
    assert isinstance(seen["verify"], ssl.SSLContext) and "openshift-service-serving-signer-test" in _subjects(
        seen["verify"]
    )
    assert _names(seen["golden"]) == [("a_bent.png", ["bent"]), ("b_both.png", ["bent", "scratch"])]


def test_local_rollout_step_applies_the_rule_and_rolls_back(
    local_stack, register, http_model_server, tmp_path, dataset, mlflow_client, monkeypatch
):
    """The step end to end on the real stack: a model blind to one class is rolled back by default."""
    from components.kfp.rollout import rollout
    from components.registry import get_champion

    for key, value in local_stack.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VINSPECT_MODEL_URL", http_model_server)
    # http_model_server set VINSPECT_MODEL_TOKEN: the step sends it, as it would to a real server.
    name = f"tiny-rule-{uuid.uuid4().hex[:8]}"
    good = register(name, "run-both", detections=BOTH)
    bent_only = register(name, "run-bent", detections=BENT_IN_THE_MIDDLE)
    args = dict(
        serving_mode="local", namespace="", inference_service="", data_connection="", smoke_images=2, timeout_s=30
    )

    out = rollout(
        SimpleNamespace(path=str(dataset)),
        model_name=name,
        version=good.version,
        storage_uri=good.storage_uri,
        **args,
    )
    assert out.status == "deployed" and get_champion(mlflow_client, name) == good.version
    with pytest.raises(RuntimeError, match=r"rolled back.*found 1 of the 2 expected classes"):
        rollout(
            SimpleNamespace(path=str(dataset)),
            model_name=name,
            version=bent_only.version,
            storage_uri=bent_only.storage_uri,
            **args,
        )
    assert get_champion(mlflow_client, name) == good.version
    # The same model passes a rule asking for one class.
    out = rollout(
        SimpleNamespace(path=str(dataset)),
        model_name=name,
        version=bent_only.version,
        storage_uri=bent_only.storage_uri,
        smoke_min_classes=1,
        **args,
    )
    assert out.status == "deployed" and get_champion(mlflow_client, name) == bent_only.version
