"""``l1cnn serve``: a real server in a subprocess, its JSON API, its limits, its page, its load.

The server here has a token (from $L1CNN_SERVE_TOKEN) and a rate limit high enough for the load
test, so every test below goes through the whole guarded stack; test_serve_security.py covers
generated tokens, TLS, the rate limit itself, CORS and the refusal to serve a network openly.
"""

from __future__ import annotations

import importlib.util
import io
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import interruptible

from l1cnn.cli import main
from l1cnn.errors import ConfigError
from l1cnn.predict import predict
from l1cnn.runs import load_run
from l1cnn.serve import ServeLimits, is_loopback

httpx = pytest.importorskip("httpx")

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"
_spec = importlib.util.spec_from_file_location("serve_load", _BENCH)
serve_load = importlib.util.module_from_spec(_spec)
sys.modules["serve_load"] = serve_load
_spec.loader.exec_module(serve_load)

CHROMIUM = Path("/usr/bin/chromium")
LIMITS = ["--max-request-bytes", "300000", "--max-image-pixels", "40000", "--max-batch", "16"]
TOKEN = "test-token-" + "7f3a9c" * 4  # what a user would put in $L1CNN_SERVE_TOKEN
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RATE = ["--max-requests-per-minute", "100000"]  # far above the load test's 2,000 requests


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve") / "server.log"


@pytest.fixture(scope="module")
def server(trained_run: Path, server_log: Path):
    with serve_load.running_server(
        trained_run,
        serve_load.free_port(),
        *LIMITS,
        *RATE,
        env={"L1CNN_SERVE_TOKEN": TOKEN},
        log=server_log,
    ) as url:
        yield url


@pytest.fixture(scope="module")
def api(server: str):
    """A client that sends the token."""
    with httpx.Client(base_url=server, headers=AUTH, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="module")
def source_images(trained_run: Path) -> tuple[Path, np.ndarray]:
    source = Path(load_run(trained_run).info["source"])
    return source, np.load(source)["x"]


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_health_and_model_description(server, api, trained_run):
    assert httpx.get(server + "/healthz").json() == {"status": "ok"}  # open without a token
    info = api.get("/v1/model").json()
    run = load_run(trained_run)
    assert info["class_names"] == run.class_names and info["positive_class"] == "1"
    assert info["threshold"] == run.threshold and info["image_shape"] == [12, 12, 1]
    assert info["config"]["model"]["conv_filters"] == [4, 8]
    assert info["metrics"]["test"]["roc_auc"] == pytest.approx(run.metrics["test"]["roc_auc"])
    assert info["limits"] == {
        "max_request_bytes": 300000,
        "max_image_pixels": 40000,
        "max_batch": 16,
    }


def test_json_instances_answer_like_predict(api, trained_run, source_images):
    source, x = source_images
    want = predict(trained_run, [source]).predictions[:10]
    # As TF Serving takes them: plain (H, W, C) arrays, or named {"pixels": (H, W)} objects.
    for instances in (
        [img.tolist() for img in x[:10]],
        [{"pixels": img[..., 0].tolist()} for img in x[:10]],
    ):
        r = api.post("/v1/predict", json={"instances": instances})
        assert r.status_code == 200
        got = r.json()["predictions"]
        assert len(got) == 10
        for g, w in zip(got, want, strict=True):
            assert g["probability"] == pytest.approx(w.probability, abs=1e-5)
            assert (
                g["class"] == w.predicted_class
                and g["threshold"] == load_run(trained_run).threshold
            )


def test_uploaded_images_answer_like_predict(api, trained_run, tmp_path):
    rng = np.random.default_rng(5)
    paths = []
    for i in range(3):  # 20x20: the server must resize exactly as training does
        img = rng.integers(0, 255, (20, 20), dtype=np.uint8)
        img[:10, :10] = 230 if i % 2 else img[:10, :10]
        paths.append(tmp_path / f"img{i}.png")
        paths[-1].write_bytes(_png(img))
    want = predict(trained_run, paths).predictions
    files = [("image", (p.name, p.read_bytes(), "image/png")) for p in paths]
    r = api.post("/v1/predict", files=files)
    assert r.status_code == 200
    got = r.json()["predictions"]
    assert [g["id"] for g in got] == [p.name for p in paths]
    for g, w in zip(got, want, strict=True):
        assert g["probability"] == pytest.approx(w.probability, abs=1e-5)
        assert g["class"] == w.predicted_class
    # The page asks for the model's view and a saliency map of it.
    r = api.post("/v1/predict?saliency=true", files=files[:1])
    item = r.json()["predictions"][0]
    assert np.array(item["pixels"]).shape == (12, 12, 1)
    sal = np.array(item["saliency"])
    assert sal.shape == (12, 12) and sal.min() >= 0 and sal.max() <= 1


def _bad_requests() -> list[tuple[str, dict, int, str]]:
    png = _png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    big_image = _png(np.zeros((300, 300), np.uint8))  # 90,000 pixels, a small file
    return [
        (
            "not an image",
            {"files": {"image": ("a.png", b"hello, not a png", "image/png")}},
            400,
            "not a readable image",
        ),
        (
            "truncated",
            {"files": {"image": ("t.png", png[: 2 * len(png) // 3], "image/png")}},
            400,
            "truncated",
        ),
        ("empty file", {"files": {"image": ("e.png", b"", "image/png")}}, 400, "empty file"),
        ("no file", {"files": {"note": (None, b"just a field")}}, 400, "no image file"),
        (
            "body too large",
            {"files": {"image": ("b.png", b"\0" * 400_000, "image/png")}},
            413,
            "over the limit",
        ),
        (
            "image too large",
            {"files": {"image": ("big.png", big_image, "image/png")}},
            413,
            "300x300",
        ),
        ("wrong shape", {"json": {"instances": [[[1, 2], [3, 4]]]}}, 400, "shape [2, 2, 1]"),
        (
            "wrong JSON",
            {"content": b"{instances: [", "headers": {"content-type": "application/json"}},
            400,
            "not valid JSON",
        ),
        ("no instances", {"json": {"inputs": [[0]]}}, 400, "instances"),
        ("empty instances", {"json": {"instances": []}}, 400, "non-empty"),
        ("not numbers", {"json": {"instances": [[["a"] * 12] * 12]}}, 400, "array of numbers"),
        ("ragged", {"json": {"instances": [[[0] * 12] * 11 + [[0] * 5]]}}, 400, "rectangular"),
        ("out of range", {"json": {"instances": [np.full((12, 12), 300).tolist()]}}, 400, "0..255"),
        (
            "too many",
            {"json": {"instances": [np.zeros((12, 12)).tolist()] * 17}},
            413,
            "limit of 16",
        ),
        (
            "wrong content type",
            {"content": b"hello", "headers": {"content-type": "text/plain"}},
            415,
            "application/json",
        ),
    ]


@pytest.mark.parametrize(
    "name,kwargs,status,fragment", _bad_requests(), ids=[b[0] for b in _bad_requests()]
)
def test_bad_requests_get_clear_json_errors(
    server, api, trained_run, name, kwargs, status, fragment
):
    r = api.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]
    # Errors name what was wrong, never where things live on the server or a traceback.
    for secret in (str(trained_run), "/tmp", "Traceback", TOKEN):
        assert secret not in r.text
    assert r.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(server + "/healthz").status_code == 200  # and the server lives on


def test_wrong_method_and_path(api):
    assert api.get("/v1/predict").status_code == 405
    assert api.get("/nope").status_code == 404


def test_token_is_required_and_never_shown(server, api, server_log, source_images, trained_run):
    _, x = source_images
    body = {"instances": [img.tolist() for img in x[:4]]}
    wrong = {"Authorization": "Bearer " + TOKEN[:-1] + "x"}
    for headers in ({}, wrong, {"Authorization": TOKEN}, {"Authorization": "Basic " + TOKEN}):
        for method, path, kwargs in (
            ("POST", "/v1/predict", {"json": body}),
            ("GET", "/v1/model", {}),
            ("GET", "/metrics", {}),  # closed by default, whether or not the route exists
        ):
            r = httpx.request(method, server + path, headers=headers, **kwargs)
            assert r.status_code == 401, (headers, path)
            assert r.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in r.json()["error"] and TOKEN not in r.text
    r = api.post("/v1/predict", json=body)
    assert r.status_code == 200
    want = predict(trained_run, [Path(load_run(trained_run).info["source"])]).predictions[:4]
    got = [p["probability"] for p in r.json()["predictions"]]
    assert got == pytest.approx([w.probability for w in want], abs=1e-5)
    log = server_log.read_text()
    assert "$L1CNN_SERVE_TOKEN" in log  # where the token came from ...
    assert TOKEN not in log and TOKEN[:16] not in log  # ... never the token itself


def test_limits_and_binding_are_checked(trained_run, capsys):
    with pytest.raises(ConfigError, match="max_batch must be >= 1"):
        ServeLimits(max_batch=0)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(trained_run), "--port", str(port)]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    assert main(["serve", str(trained_run), "--port", "99999"]) == 2
    captured = capsys.readouterr()
    assert "--port must be in 0..65535" in captured.err and "Serving" not in captured.out


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed "
    "(apt-get install chromium); the page test drives it headless",
)
def test_page_in_headless_chromium(server, trained_run, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    img = np.random.default_rng(9).integers(0, 255, (12, 12), dtype=np.uint8)
    path = tmp_path / "xray.png"
    path.write_bytes(_png(img))
    want = predict(trained_run, [path]).predictions[0]
    requested: list[str] = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page()
            page.on("request", lambda req: requested.append(req.url))
            console: list[str] = []
            page.on("console", lambda msg: console.append(msg.text))
            response = page.goto(server + "/")
            csp = response.headers["content-security-policy"]
            # The page has no token yet: it asks for one, and a wrong one is refused.
            page.wait_for_selector("#auth:not([hidden])", timeout=15000)
            page.fill("#token", "not-the-token-at-all")
            page.click("#token-ok")
            # (wait_for_selector, not wait_for_function: the page's CSP forbids eval)
            page.wait_for_selector("#auth-message:has-text('Wrong token')", timeout=15000)
            page.fill("#token", TOKEN)
            page.press("#token", "Enter")
            page.wait_for_selector("#model:has-text('threshold')", timeout=15000)
            auth_hidden = page.is_hidden("#auth")
            stored = page.evaluate(
                "[document.cookie, localStorage.length, sessionStorage.length,"
                " document.getElementById('token').value]"
            )
            page.set_input_files("#file", str(path))
            page.wait_for_selector("#result:not([hidden])", timeout=15000)
            shown_class = page.text_content("#class")
            shown_prob = float(page.get_attribute("#result", "data-probability"))
            text_prob = float(page.text_content("#prob"))
            bar = page.eval_on_selector("#fill", "e => parseFloat(e.style.width)")
            marker = page.eval_on_selector("#marker", "e => parseFloat(e.style.left)")
            canvas = page.eval_on_selector("#image", "e => [e.width, e.height]")
            error = page.text_content("#error")
        finally:
            browser.close()
    assert error == ""
    assert shown_class == want.predicted_class
    assert shown_prob == pytest.approx(want.probability, abs=1e-5)
    assert text_prob == pytest.approx(want.probability, abs=1e-4)
    assert bar == pytest.approx(100 * want.probability, abs=1e-3)
    assert marker == pytest.approx(100 * load_run(trained_run).threshold)
    assert canvas == [12, 12]
    assert requested and all(u.startswith(server) for u in requested)  # nothing external
    assert auth_hidden and stored == ["", 0, 0, ""]  # the token lives in a variable only
    assert "script-src 'sha256-" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "connect-src 'self'" in csp
    assert not [m for m in console if "Content Security Policy" in m], console


def _parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text parsed by prometheus-client's own parser: (sample, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """``GET /metrics`` with the token, parsed."""
    response = httpx.get(url + "/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return _parse_metrics(response.text)


def _value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def _growth(before: dict, after: dict) -> Any:
    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    return grew


def test_metrics_count_requests_images_and_name_the_model(server, api, trained_run, source_images):
    _, x = source_images
    before = _scrape(server)
    run = load_run(trained_run)
    info = {
        "run": trained_run.name,
        "model_sha256": run.info["model_sha256"],
        "model_format": "keras",
        "positive_class": "1",
        "threshold": f"{run.threshold:g}",
    }
    assert _value(before, "l1cnn_model_info", **info) == 1.0
    answers = [
        api.post("/v1/predict", json={"instances": x[:3].tolist()}),
        api.post("/v1/predict", json={"nope": 1}),
        api.get("/no-such-page"),
        httpx.get(server + "/v1/model"),  # no token
    ]
    assert [r.status_code for r in answers] == [200, 400, 404, 401]
    classes = [p["class"] for p in answers[0].json()["predictions"]]
    grew = _growth(before, _scrape(server))
    post = {"route": "/v1/predict", "method": "POST"}
    assert grew("l1cnn_requests_total", **post, status="200") == 1
    assert grew("l1cnn_requests_total", **post, status="400") == 1
    assert grew("l1cnn_requests_total", route="other", method="GET", status="404") == 1
    assert grew("l1cnn_requests_total", route="/v1/model", method="GET", status="401") == 1
    assert grew("l1cnn_request_duration_seconds_count", route="/v1/predict") == 2
    for name in run.class_names:
        assert grew("l1cnn_images_predicted_total", class_name=name) == classes.count(name)
    assert grew("l1cnn_images_referred_total") == 0  # no abstention configured
    # The scrape before this one is counted too.
    assert grew("l1cnn_requests_total", route="/metrics", method="GET", status="200") == 1


def test_metrics_count_refer_decisions():
    from l1cnn.serve_metrics import IDENTITY_LABELS, ServeMetrics

    metrics = ServeMetrics(dict.fromkeys(IDENTITY_LABELS, "x"), ["cat", "dog"])
    metrics.count_answers(
        [
            {"class": "dog", "decision": "refer"},
            {"class": "dog", "decision": "dog"},
            {"class": "cat", "decision": "refer"},
            {"class": "cat"},  # no abstention: no decision field
        ]
    )
    got = _parse_metrics(metrics.render().decode())
    assert _value(got, "l1cnn_images_referred_total") == 2
    assert _value(got, "l1cnn_images_predicted_total", class_name="dog") == 2
    assert _value(got, "l1cnn_images_predicted_total", class_name="cat") == 2


def test_metrics_count_refer_decisions_of_a_run_that_abstains(trained_run, source_images):
    import inspect

    from fastapi.testclient import TestClient

    from l1cnn.serve import create_app, predictor_for

    if "abstain" not in inspect.signature(predictor_for).parameters:
        pytest.skip('this build has no abstention (issue 15\'s "decision" field) to count')
    _, x = source_images
    with TestClient(create_app(predictor_for(trained_run, abstain=0.99))) as client:
        answers = client.post("/v1/predict", json={"instances": x[:16].tolist()}).json()
        got = _parse_metrics(client.get("/metrics").text)
    decisions = [item["decision"] for item in answers["predictions"]]
    assert "refer" in decisions  # at 99% coverage this tiny model refers some images
    assert _value(got, "l1cnn_images_referred_total") == decisions.count("refer")


def test_metrics_public_opens_metrics_only(trained_run):
    from fastapi.testclient import TestClient

    from l1cnn.serve import create_app
    from l1cnn.serve_security import ServeSecurity

    for public, want in ((False, 401), (True, 200)):
        app = create_app(trained_run, security=ServeSecurity(metrics_public=public), token=TOKEN)
        with TestClient(app) as client:
            assert client.get("/metrics").status_code == want
            assert client.get("/v1/model").status_code == 401  # the API stays closed
            if public:
                scraped = _parse_metrics(client.get("/metrics").text)
                assert (
                    _value(
                        scraped,
                        "l1cnn_requests_total",
                        route="/v1/model",
                        method="GET",
                        status="401",
                    )
                    == 1
                )


@pytest.mark.slow
def test_bounded_load_without_errors(server, source_images):
    _, x = source_images
    bodies = serve_load.request_bodies(x)
    before = _scrape(server)
    result = serve_load.run_load(server, bodies, n_requests=2000, clients=8, headers=AUTH)
    assert result["requests"] == 2000
    assert result["errors"] == 0, result["first_errors"]
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["requests_per_s"] > 0
    print(json.dumps(result))
    # /metrics scraped after the load: every request counted once, every image once.
    grew = _growth(before, _scrape(server))
    post = {"route": "/v1/predict", "method": "POST"}
    assert grew("l1cnn_requests_total", **post, status="200") == 2000
    assert grew("l1cnn_request_duration_seconds_count", route="/v1/predict") == 2000
    images = sum(len(json.loads(bodies[i % len(bodies)])["instances"]) for i in range(2000))
    predicted = sum(grew("l1cnn_images_predicted_total", class_name=n) for n in ("0", "1"))
    assert predicted == images == 2000


@pytest.mark.slow  # starts a second server: about 10 s on a busy machine
def test_ctrl_c_stops_the_server_cleanly(trained_run):
    port = serve_load.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "l1cnn.cli", "serve", str(trained_run), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=interruptible,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.25)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert out.decode().splitlines()[-1] == "Stopped."
    assert "Traceback" not in err.decode() and "error:" not in err.decode()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_cli_refuses_a_missing_run(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
