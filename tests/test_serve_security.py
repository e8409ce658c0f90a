"""``l1cnn serve`` on a network: refusing to serve openly, generated tokens, TLS, rate limits, CORS.

Real servers on loopback ports with a real HTTP client. "Another client" is a socket bound to
another loopback address (all of 127.0.0.0/8 is this machine). The only non-loopback address
used is 0.0.0.0, in the tests that check the refusal comes before any socket is bound.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from l1cnn.cli import main
from l1cnn.errors import ConfigError
from l1cnn.serve_security import (
    DEFAULT_REQUESTS_PER_MINUTE,
    TOKEN_ENV,
    ServeSecurity,
    TokenBucket,
    resolve_token,
)

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"
_spec = importlib.util.spec_from_file_location("serve_load", _BENCH)
serve_load = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("serve_load", serve_load)
_spec.loader.exec_module(serve_load)

OPENSSL = shutil.which("openssl")
ALLOWED = "http://allowed.example"


def _client(local_address: str, **kwargs) -> httpx.Client:
    """A client whose connections come from ``local_address`` (a loopback address)."""
    transport = httpx.HTTPTransport(local_address=local_address, verify=kwargs.pop("verify", True))
    return httpx.Client(transport=transport, timeout=30.0, **kwargs)


def _openssl(*args: str) -> None:
    subprocess.run([OPENSSL, *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed certificate for 127.0.0.1, its key, and a key that does not match it."""
    if OPENSSL is None:
        pytest.skip("the openssl command is not installed (the cryptography package is not)")
    d = tmp_path_factory.mktemp("tls")
    files = {"cert": d / "cert.pem", "key": d / "key.pem", "other_key": d / "other.pem"}
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    _openssl(
        "req", "-x509", *ec, "-nodes", "-keyout", str(files["key"]), "-out", str(files["cert"]),
        "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
    )  # fmt: skip
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-out", str(files["other_key"]),
    )  # fmt: skip
    return files


@pytest.fixture(scope="module")
def generated(trained_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server whose token file did not exist (so it made one), 5 requests per minute."""
    d = tmp_path_factory.mktemp("generated")
    token_file, log = d / "token", d / "server.log"
    args = ["--token-file", str(token_file), "--max-requests-per-minute", "5"]
    env = {TOKEN_ENV: ""}  # the file is the only source
    with serve_load.running_server(
        trained_run, serve_load.free_port(), *args, env=env, log=log
    ) as url:
        yield {"url": url, "token_file": token_file, "log": log}


@pytest.fixture(scope="module")
def tls_server(trained_run: Path, tls_files: dict[str, Path]):
    """HTTPS on loopback, no token given (so none needed), CORS for one origin."""
    args = ["--tls-cert", str(tls_files["cert"]), "--tls-key", str(tls_files["key"])]
    with serve_load.running_server(
        trained_run,
        serve_load.free_port(),
        *args,
        "--allow-origin",
        ALLOWED,
        env={TOKEN_ENV: ""},
        https_ca=tls_files["cert"],
    ) as url:
        yield url


def test_generated_token_file_is_private_and_never_printed(generated):
    path = generated["token_file"]
    assert path.stat().st_mode & 0o777 == 0o600
    token = path.read_text().strip()
    assert len(token) >= 40  # 32 random bytes, base64
    log = generated["log"].read_text()
    assert f"a new random token in {path}" in log and token not in log
    with _client("127.0.0.1", base_url=generated["url"]) as http:
        assert http.get("/v1/model").status_code == 401
        r = http.get("/v1/model", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["image_shape"] == [12, 12, 1]
    assert token not in generated["log"].read_text()


def test_rate_limit_is_per_client(generated):
    auth = {"Authorization": "Bearer " + generated["token_file"].read_text().strip()}
    with _client("127.0.0.2", base_url=generated["url"], headers=auth) as busy:
        assert [busy.get("/v1/model").status_code for _ in range(5)] == [200] * 5
        r = busy.get("/v1/model")
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 12  # one request every 60/5 s
        assert "5 requests per minute" in r.json()["error"]
        assert busy.get("/healthz").status_code == 200  # load balancers are not limited
    with _client("127.0.0.3", base_url=generated["url"], headers=auth) as other:
        assert other.get("/v1/model").status_code == 200


def test_no_cors_unless_asked(generated):
    auth = {"Authorization": "Bearer " + generated["token_file"].read_text().strip()}
    evil = {"Origin": "http://evil.example"}
    with _client("127.0.0.4", base_url=generated["url"]) as http:
        r = http.get("/v1/model", headers={**auth, **evil})
        assert r.status_code == 200
        assert not [h for h in r.headers if h.startswith("access-control-")]
        preflight = {**evil, "Access-Control-Request-Method": "POST"}
        r = http.options("/v1/predict", headers=preflight)
        assert not [h for h in r.headers if h.startswith("access-control-")]
        assert r.headers["x-content-type-options"] == "nosniff"


def test_https_with_a_self_signed_certificate(tls_server, tls_files):
    assert tls_server.startswith("https://")
    with httpx.Client(base_url=tls_server, verify=str(tls_files["cert"])) as https:
        r = https.get("/v1/model")  # loopback without a token configured: open, as before
        assert r.status_code == 200 and r.json()["class_names"] == ["0", "1"]
        r = https.post("/v1/predict", json={"instances": [[[0] * 12] * 12]})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1
        page = https.get("/")
        assert "script-src 'sha256-" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
    with pytest.raises(httpx.TransportError):
        httpx.get(tls_server.replace("https://", "http://") + "/healthz", timeout=5)


def test_cors_only_for_the_allowed_origin(tls_server, tls_files):
    with httpx.Client(base_url=tls_server, verify=str(tls_files["cert"])) as https:
        r = https.get("/v1/model", headers={"Origin": ALLOWED})
        assert r.headers["access-control-allow-origin"] == ALLOWED
        r = https.get("/v1/model", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        ask = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        }
        r = https.options("/v1/predict", headers={"Origin": ALLOWED, **ask})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = https.options("/v1/predict", headers={"Origin": "http://evil.example", **ask})
        assert "access-control-allow-origin" not in r.headers


@pytest.fixture
def no_bind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything binds a socket (the refusals must come before)."""

    def refuse(self, address):
        raise AssertionError(f"a socket was bound to {address}")

    monkeypatch.setattr(socket.socket, "bind", refuse)
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def _refused(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Serving" not in captured.out and "Traceback" not in captured.err
    return lines[0]


def test_network_bind_without_a_token_is_refused_before_binding(
    trained_run, tmp_path, capsys, monkeypatch, no_bind
):
    serve = ["serve", str(trained_run), "--host", "0.0.0.0", "--port", "8765"]
    line = _refused(capsys, serve)
    assert "binding 0.0.0.0" in line and "--token-file" in line and "--no-auth" in line
    monkeypatch.setenv(TOKEN_ENV, "short")
    assert "shorter than 16" in _refused(capsys, serve)
    monkeypatch.delenv(TOKEN_ENV)
    missing_dir = tmp_path / "no" / "token"
    assert "cannot write a token" in _refused(capsys, [*serve, "--token-file", str(missing_dir)])
    line = _refused(capsys, [*serve, "--no-auth", "--token-file", str(tmp_path / "t")])
    assert "contradict" in line


def test_tls_files_are_checked_before_binding(trained_run, tls_files, tmp_path, capsys, no_bind):
    serve = ["serve", str(trained_run), "--port", "8765"]
    cert, key = str(tls_files["cert"]), str(tls_files["key"])
    assert "go together" in _refused(capsys, [*serve, "--tls-cert", cert])
    missing = str(tmp_path / "missing.pem")
    line = _refused(capsys, [*serve, "--tls-cert", missing, "--tls-key", key])
    assert f"--tls-cert {missing}" in line and "No such file" in line
    line = _refused(capsys, [*serve, "--tls-cert", cert, "--tls-key", str(tls_files["other_key"])])
    assert "do not load as a pair" in line
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    line = _refused(capsys, [*serve, "--tls-cert", str(tmp_path / "junk.pem"), "--tls-key", key])
    assert "do not load as a pair" in line


def test_token_sources_and_their_order(tmp_path):
    env_token = "e" * 20
    file_token = "f" * 24
    (tmp_path / "token").write_text(file_token + "\n")
    (tmp_path / "token").chmod(0o600)
    from_file = ServeSecurity(token_file=str(tmp_path / "token"))
    token, warnings = resolve_token(from_file, "0.0.0.0", False, {TOKEN_ENV: env_token})
    assert token.value == file_token and warnings == []  # the command line beats the environment
    assert file_token not in repr(token)
    token, _ = resolve_token(ServeSecurity(), "0.0.0.0", False, {TOKEN_ENV: env_token})
    assert token.value == env_token and token.source == f"${TOKEN_ENV}"
    token, _ = resolve_token(ServeSecurity(), "127.0.0.1", True, {TOKEN_ENV: env_token})
    assert token.value == env_token  # on loopback a given token is required too
    assert resolve_token(ServeSecurity(), "127.0.0.1", True, {}) == (None, [])
    token, warnings = resolve_token(ServeSecurity(no_auth=True), "0.0.0.0", False, {})
    assert token is None and "anyone who can reach 0.0.0.0" in warnings[0]
    (tmp_path / "token").chmod(0o644)
    _, warnings = resolve_token(from_file, "127.0.0.1", True, {})
    assert "can be read by other users" in warnings[0]
    (tmp_path / "token").write_text("has a space in the middle\n")
    with pytest.raises(ConfigError, match="printable ASCII without spaces"):
        resolve_token(from_file, "127.0.0.1", True, {})


def test_options_are_checked():
    assert ServeSecurity().rate(loopback=True) == 0
    assert ServeSecurity().rate(loopback=False) == DEFAULT_REQUESTS_PER_MINUTE
    assert ServeSecurity(max_requests_per_minute=0).rate(loopback=False) == 0
    assert ServeSecurity().open_paths() == {"/", "/healthz"}
    assert "/metrics" in ServeSecurity(metrics_public=True).open_paths()
    with pytest.raises(ConfigError, match=">= 0"):
        ServeSecurity(max_requests_per_minute=-1)
    with pytest.raises(ConfigError, match="https://host"):
        ServeSecurity(allow_origin="allowed.example")


def test_token_bucket_refills_at_its_rate():
    now = [100.0]
    bucket = TokenBucket(3, clock=lambda: now[0])  # 3 at once, then one every 20 s
    assert [bucket.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("a") == pytest.approx(20.0)
    assert bucket.take("b") == 0.0  # another client has its own bucket
    now[0] += 10.0
    assert bucket.take("a") == pytest.approx(10.0)
    now[0] += 10.0
    assert bucket.take("a") == 0.0 and bucket.take("a") == pytest.approx(20.0)
