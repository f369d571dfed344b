"""Dashboard: result events over HTTP (Knative Trigger) -> SSE -> headless Chromium; escaping."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from cloudevents.v1.conversion import to_binary, to_structured
from PIL import Image

from serving.dashboard.app import DashboardState, ImageSource, create_app, sanitize_result
from serving.events import result_event

from .conftest import ThreadServer, free_port

BUCKET, PREFIX = "vinspect-data", "annotated-dash"

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "dash-token-for-test"
XSS = '<img src=x onerror="window.__pwned=1">'


def _jpeg(w: int = 64, h: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _data_url(w: int = 64, h: int = 48) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(_jpeg(w, h)).decode()


@pytest.fixture
def images(local_stack):
    """The dashboard's image source on the local stack's S3, with one stored annotated image."""
    key = f"{PREFIX}/2026-12-06/cam-0/first-abc123.jpg"
    local_stack.s3.put_object(Bucket=BUCKET, Key=key, Body=_jpeg(), ContentType="image/jpeg")
    source = ImageSource(local_stack.s3, BUCKET, PREFIX)
    source.stored_key = key
    return source


def _result(camera: str, image_id: str, detections=(), image: str | None = None, **extra) -> dict:
    return {
        "camera": camera,
        "image_id": image_id,
        "captured_at": "2026-11-29T00:00:00Z",
        "label": extra.pop("label", "bent"),
        "passed": not detections,
        "detections": list(detections),
        "image": {"width": 64, "height": 48},
        "model": {"name": "metal-nut", "version": "3"},
        "timings_ms": {"total": 12.5, "inference": 8.0},
        "annotated_image": image if image is not None else _data_url(),
        **extra,
    }


def _post(url: str, data: dict, event_id: str, structured: bool = False, token: str | None = None) -> httpx.Response:
    event = result_event(data, event_id, data["camera"], "/test")
    headers, body = (to_structured if structured else to_binary)(event)
    if token:
        headers = {**headers, "Authorization": f"Bearer {token}"}
    return httpx.post(url + "/", content=body, headers=headers)


def test_sanitize_keeps_known_fields_and_rejects_non_image_urls():
    view = sanitize_result(_result("c1", "i1", image="javascript:alert(1)", extra_field="x"), "e1")
    assert view["image"] is None and "extra_field" not in view
    view = sanitize_result(
        _result(
            "c1",
            "i1",
            detections=[{"class_id": 1, "class_name": "bent", "score": "0.9", "box": [1, 2, 3, float("nan")]}],
        )
    )
    assert view["detections"] == [{"class_id": 1, "class_name": "bent", "score": 0.9, "box": None}]
    with pytest.raises(ValueError, match="camera"):
        sanitize_result({"detections": []})


def test_http_feed_dedupes_and_counts():
    state = DashboardState()
    with ThreadServer(create_app(state)) as server:
        first = _post(server.url, _result("cam-a", "i1"), "i1")
        # Knative reply contract: an acknowledgement has an empty body (a JSON body that is not
        # a CloudEvent is a failed delivery at the Kafka Broker).
        assert first.status_code == 202 and first.content == b""
        assert _post(server.url, _result("cam-a", "i1"), "i1").status_code == 202  # redelivery
        assert _post(server.url, _result("cam-a", "i2"), "i2", structured=True).status_code == 202
        snap = httpx.get(server.url + "/api/cameras").json()
        assert snap["counts"] == {"cam-a": {"total": 2, "pass": 2, "fail": 0}}
        assert snap["cameras"][0]["image_id"] == "i2"
        r = httpx.post(server.url + "/", content=b"nope")
        assert r.status_code == 400
        page = httpx.get(server.url + "/")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert httpx.get(server.url + "/static/../app.py").status_code == 404


def test_claim_check_images_are_fetched_through_the_dashboard(images):
    key = images.stored_key
    state = DashboardState(images=images)
    with ThreadServer(create_app(state)) as server:
        ref = {"bucket": BUCKET, "key": key, "content_type": "image/jpeg", "bytes": 1}
        assert (
            _post(server.url, _result("cam-0", "i1", image=ref, annotated_image_status="stored"), "i1").status_code
            == 202
        )
        view = httpx.get(server.url + "/api/cameras").json()["cameras"][0]
        assert view["image"] == f"/images/{key}" and view["image_status"] == "stored"
        r = httpx.get(server.url + view["image"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert r.content == _jpeg()
        # Only the configured bucket and prefix: an event cannot make the server read other objects.
        for bad in (
            {"bucket": "models", "key": key},
            {"bucket": BUCKET, "key": "other/x/y.jpg"},
            {"bucket": BUCKET, "key": f"{PREFIX}/../secrets/x.jpg"},
        ):
            assert sanitize_result(_result("c", "i", image=bad), "e", images)["image"] is None
        assert httpx.get(server.url + "/images/other/x/y.jpg").status_code == 404
        assert httpx.get(server.url + f"/images/{PREFIX}/2026-12-06/cam-0/missing.jpg").status_code == 404
        # S3 down: the result was shown, its picture is a 503, the server goes on.
        dead = ImageSource(
            __import__("boto3").client(
                "s3",
                endpoint_url=f"http://127.0.0.1:{free_port()}",
                aws_access_key_id="x",
                aws_secret_access_key="y",
                region_name="us-east-1",
            ),
            BUCKET,
            PREFIX,
        )
        state.images = dead
        assert httpx.get(server.url + f"/images/{key}", timeout=60).status_code == 503


def test_dashboard_token_and_limits():
    with ThreadServer(create_app(DashboardState(), token="dash-token-for-test")) as server:
        assert _post(server.url, _result("c", "i"), "i").status_code == 401
        event = result_event(_result("c", "i"), "i", "c", "/test")
        headers, body = to_binary(event)
        auth = {"Authorization": "Bearer dash-token-for-test"}
        assert httpx.post(server.url + "/", content=body, headers={**headers, **auth}).status_code == 202
        r = httpx.post(server.url + "/", content=b"x" * (300 * 1024), headers={**headers, **auth})
        assert r.status_code == 413
        # Only result events: an image event routed here by mistake is refused, not shown.
        headers["ce-type"] = "io.vinspect.image.captured"
        r = httpx.post(server.url + "/", content=body, headers={**headers, **auth})
        assert r.status_code == 400 and "not io.vinspect.inspection.result" in r.json()["error"]
        assert httpx.get(server.url + "/healthz").status_code == 200


def test_page_is_live_and_escapes_everything(images):
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium not installed at /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    state = DashboardState(images=images)
    with ThreadServer(create_app(state)) as server, sync_playwright() as pw:
        # The good camera's picture is a claim check: the page loads it through the server.
        _post(server.url, _result("cam-0", "first", image={"bucket": BUCKET, "key": images.stored_key}), "first")
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(server.url + "/")
            page.wait_for_selector('section.camera[data-camera="cam-0"]')
            page.wait_for_selector("#status[data-state=live]")

            # Arrives while the page is open: pushed over SSE, no reload.
            hostile = _result(
                XSS,
                "evil",
                label=XSS,
                captured_at="</dd><script>alert(2)</script>",
                detections=[{"class_id": 1, "class_name": XSS, "score": 0.93, "box": [8, 6, 40, 30]}],
                model={"name": "<b>m</b>", "version": '"><svg onload=alert(3)>'},
            )
            assert _post(server.url, hostile, "evil").status_code == 202
            card = page.locator('section.camera[data-image-id="evil"]')
            card.wait_for()
            assert card.get_attribute("data-camera") == XSS
            assert card.locator(".verdict").inner_text() == "FAIL"
            assert card.locator(".camera-id").inner_text() == XSS
            assert card.locator(".label").inner_text() == XSS
            assert card.locator(".model").inner_text() == '<b>m</b> v"><svg onload=alert(3)>'
            assert card.locator("li.detection").inner_text() == f"{XSS} 93%"
            rect = card.locator("svg.boxes rect")
            assert rect.count() == 1
            assert rect.get_attribute("data-label") == XSS
            assert [rect.get_attribute(a) for a in ("x", "y", "width", "height")] == ["8", "6", "32", "24"]
            # Nothing was interpreted as markup or script.
            assert page.locator("img[src=x]").count() == 0
            assert page.locator("main script, main b, main svg[onload]").count() == 0
            assert page.evaluate("window.__pwned") is None
            assert not dialogs
            # The image of the good camera rendered; the totals follow the counts.
            assert page.locator('section.camera[data-camera="cam-0"] img.picture').evaluate(
                "img => img.complete && img.naturalWidth === 64"
            )
            page.wait_for_selector('#totals[data-total="2"]')
            # A non-image "image" is never put into src.
            _post(server.url, _result("cam-0", "js", image="javascript:alert(4)"), "js")
            page.wait_for_selector('section.camera[data-camera="cam-0"][data-image-id="js"]')
            assert page.locator('section.camera[data-camera="cam-0"] img.picture').get_attribute("src") is None
            # A result whose image could not be stored says so where the picture would be.
            _post(server.url, _result("cam-0", "s3down", image={}, annotated_image_status="failed: S3 down"), "s3down")
            page.wait_for_selector('section.camera[data-camera="cam-0"][data-image-id="s3down"]')
            picture = page.locator('section.camera[data-camera="cam-0"] img.picture')
            assert picture.get_attribute("src") is None
            assert picture.get_attribute("alt") == "no image: failed: S3 down"
        finally:
            browser.close()


@pytest.fixture
def review_desk(local_stack):
    """A review desk on the local stack's S3: a fresh queue prefix, and a failed frame's two copies."""
    import uuid

    from serving.dashboard.app import ReviewDesk
    from serving.review import ReviewPolicy, ReviewSelector, ReviewStore

    s3 = local_stack.s3
    base = f"{PREFIX}/2026-12-06/cam-0/fail-{uuid.uuid4().hex[:6]}"
    s3.put_object(Bucket=BUCKET, Key=base + ".jpg", Body=_jpeg(64, 48), ContentType="image/jpeg")  # drawn on
    clean = _jpeg(32, 24)
    s3.put_object(Bucket=BUCKET, Key=base + ".orig.jpg", Body=clean, ContentType="image/jpeg")
    images = ImageSource(s3, BUCKET, PREFIX)
    store = ReviewStore(s3, BUCKET, f"review-dash-{uuid.uuid4().hex[:8]}/")
    desk = ReviewDesk(ReviewSelector(ReviewPolicy(audit_rate=0.0)), store, images, size_ttl_s=0.0)
    desk.ref = {"bucket": BUCKET, "key": base + ".jpg", "original_key": base + ".orig.jpg"}
    desk.clean = clean
    return desk


def test_flag_api_needs_the_token_and_the_clean_frame(review_desk):
    state = DashboardState(images=review_desk.images, review=review_desk)
    bent = [{"class_id": 1, "class_name": "bent", "score": 0.9, "box": [1, 2, 30, 20]}]
    with ThreadServer(create_app(state, token="dash-token-for-test")) as server:
        _post(server.url, _result("cam-0", "f1", detections=bent, image=review_desk.ref), "f1", token=TOKEN)
        # A failed frame whose clean copy was not stored: only the drawn-on copy exists.
        drawn_only = {k: v for k, v in review_desk.ref.items() if k != "original_key"}
        _post(server.url, _result("cam-0", "f2", detections=bent, image=drawn_only), "f2", token=TOKEN)
        auth = {"Authorization": "Bearer dash-token-for-test"}
        assert httpx.post(server.url + "/api/flag", json={"image_id": "f1"}).status_code == 401
        assert httpx.post(server.url + "/api/flag", json={"image_id": "nope"}, headers=auth).status_code == 404
        assert httpx.post(server.url + "/api/flag", content=b"[1]", headers=auth).status_code == 400
        r = httpx.post(server.url + "/api/flag", json={"image_id": "f2"}, headers=auth)
        assert r.status_code == 409 and "was not stored" in r.json()["error"]
        r = httpx.post(server.url + "/api/flag", json={"image_id": "f1"}, headers=auth)
        assert r.status_code == 201 and r.json()["reasons"] == ["flagged"]
        again = httpx.post(server.url + "/api/flag", json={"image_id": "f1"}, headers=auth)
        assert again.status_code == 200 and again.json()["queued"] is False  # de-duplicated
        assert httpx.get(server.url + "/api/review").json() == {"enabled": True, "queue_size": 1}
    (item,) = review_desk.store.pending()
    assert review_desk.store.image(item) == review_desk.clean  # the camera's frame, not the drawn copy
    assert item.record["camera"] == "cam-0" and item.record["verdict"] == "fail"
    assert item.record["detections"][0]["class_name"] == "bent"
    # Without a review desk the page hides the queue and flags are refused.
    with ThreadServer(create_app(DashboardState())) as server:
        assert httpx.get(server.url + "/api/review").json()["enabled"] is False
        assert httpx.post(server.url + "/api/flag", json={"image_id": "f1"}).status_code == 404


def test_page_shows_history_failures_queue_and_flags_a_frame(review_desk, monkeypatch):
    """In Chromium: defect rate over time and recent failures per camera, the queue size, and an
    operator's flag (the page asks for the dashboard token once) that lands in the S3 queue."""
    import time
    from types import SimpleNamespace

    import serving.dashboard.app as dashboard_app

    # Results are bucketed by the minute they arrive in: hold the server's clock at the start of
    # this minute, or a run that crosses a minute boundary sees two bars instead of one.
    arrived = time.time() // 60 * 60 + 1
    monkeypatch.setattr(dashboard_app, "time", SimpleNamespace(time=lambda: arrived, monotonic=time.monotonic))
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium not installed at /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    state = DashboardState(images=review_desk.images, review=review_desk)
    bent = [{"class_id": 1, "class_name": "bent", "score": 0.9, "box": [1, 2, 30, 20]}]
    with ThreadServer(create_app(state, token="dash-token-for-test")) as server, sync_playwright() as pw:
        for i in range(3):  # 1 of 4 failed on cam-0
            _post(server.url, _result("cam-0", f"ok{i}"), f"ok{i}", token=TOKEN)
        _post(server.url, _result("cam-0", "bad1", detections=bent, image=review_desk.ref), "bad1", token=TOKEN)
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            prompts: list[str] = []
            page.on("dialog", lambda d: (prompts.append(d.message), d.accept("dash-token-for-test")))
            page.goto(server.url + "/")
            card = page.locator('section.camera[data-camera="cam-0"]')
            card.wait_for()
            page.wait_for_selector("#status[data-state=live]")
            bar = card.locator("svg.history rect")
            assert bar.count() == 1 and bar.get_attribute("data-rate") == "0.250"
            assert card.locator(".rate").inner_text() == "25.0 % (last hour)"
            page.wait_for_selector('#review-queue[data-size="0"]')
            assert page.locator("#review-queue").inner_text() == "review queue: 0"
            # A failure that arrives while the page is open joins the list, newest first.
            _post(server.url, _result("cam-0", "bad2", detections=bent, image={}), "bad2", token=TOKEN)
            page.wait_for_selector('section.camera[data-camera="cam-0"] li.failure[data-image-id="bad2"]')
            assert card.locator("li.failure").evaluate_all("els => els.map(e => e.dataset.imageId)") == ["bad2", "bad1"]
            assert card.locator("svg.history rect").get_attribute("data-rate") == "0.400"
            # The operator flags the earlier failure: the page asks for the token, the frame is queued.
            card.locator('li.failure[data-image-id="bad1"] button.flag-failure').click()
            page.wait_for_selector('section.camera[data-camera="cam-0"] .flag-status[data-state="queued"]')
            assert prompts == ["Dashboard token (to send frames to review)"]
            page.wait_for_selector('#review-queue[data-size="1"]')
            # The second flag, on the latest frame (no clean copy stored), is refused with the reason,
            # and the token is not asked again.
            card.locator("button.flag").click()
            page.wait_for_selector('section.camera[data-camera="cam-0"] .flag-status[data-state="error"]')
            assert "was not stored" in card.locator(".flag-status").inner_text()
            assert len(prompts) == 1
        finally:
            browser.close()
    (item,) = review_desk.store.pending()
    assert item.record["reasons"] == ["flagged"] and item.record["image_id"] == "bad1"
    assert review_desk.store.image(item) == review_desk.clean
