"""An HTTP server for a run: a JSON API like TF Serving's REST API, and a page to try images.

FastAPI on uvicorn. Uploaded images go through the same decoding and resizing as training
(``data.load_image``), pixel arrays must already have the run's shape. Every limit (request
bytes, image pixels, batch size) is refused with a JSON error and a 4xx status, never a crash.
Who may call it and how fast (token, TLS, rate limit, headers, CORS) is ``serve_security``'s.
"""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from l1cnn.config import ServeLimits, config_to_dict
from l1cnn.data import load_image
from l1cnn.errors import ConfigError, DataError
from l1cnn.exported import ExportedModel, is_export_folder, load_export
from l1cnn.runs import Run, load_run
from l1cnn.serve_metrics import METRICS_PATH, MetricsMiddleware, ServeMetrics
from l1cnn.serve_page import PAGE, PAGE_CSP
from l1cnn.serve_security import (
    BearerAuth,
    RateLimit,
    SecurityHeaders,
    ServeSecurity,
    check_tls_files,
)

LOOPBACK = ("127.0.0.1", "::1", "localhost")


class RequestError(Exception):
    """A bad request: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` with 413, counting what arrives.

    Checked on the declared Content-Length first and again on the bytes actually received, so
    a chunked or lying client cannot push more.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"error": f"request body over the limit of {self.max_bytes} bytes"})
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send)
            return
        received = 0
        started = False

        async def counted_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracked_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)


def _pixels_from_json(instances: Any, shape: tuple[int, int, int], max_batch: int) -> np.ndarray:
    """TF Serving-style ``instances``: (H, W, C) or (H, W) arrays, or ``{"pixels": array}``."""
    if not isinstance(instances, list) or not instances:
        raise RequestError(400, '"instances" must be a non-empty list of pixel arrays')
    if len(instances) > max_batch:
        raise RequestError(413, f"{len(instances)} instances is over the limit of {max_batch}")
    out = np.empty((len(instances), *shape), np.float32)
    for i, item in enumerate(instances):
        if isinstance(item, dict):
            if set(item) != {"pixels"}:
                raise RequestError(400, f'instance {i}: an object must be {{"pixels": ...}}')
            item = item["pixels"]
        try:
            arr = np.asarray(item, dtype=np.float32)
        except (ValueError, TypeError):
            raise RequestError(400, f"instance {i}: not a rectangular array of numbers") from None
        if arr.ndim == 2 and shape[2] == 1:
            arr = arr[..., None]
        if arr.shape != shape:
            raise RequestError(
                400, f"instance {i}: shape {list(arr.shape)} differs from the model's {list(shape)}"
            )
        if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 255:
            raise RequestError(400, f"instance {i}: pixel values must be finite and in 0..255")
        out[i] = arr
    return out


def _decode_upload(
    data: bytes, name: str, shape: tuple[int, int, int], max_pixels: int
) -> np.ndarray:
    """One uploaded image file, decoded and resized exactly as in training."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError(400, f"'{name}': empty file")
    with tempfile.NamedTemporaryFile(suffix=Path(name).suffix or ".img") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            with Image.open(tmp.name) as probe:  # reads the header only
                width, height = probe.size
        except (
            UnidentifiedImageError,
            OSError,
            ValueError,
            SyntaxError,
            EOFError,
            Image.DecompressionBombError,
        ):
            raise RequestError(
                400, f"'{name}': not a readable image (unknown format, or broken in its header)"
            ) from None
        if width * height > max_pixels:
            raise RequestError(
                413, f"'{name}': {width}x{height} is over the limit of {max_pixels} pixels"
            )
        try:
            return load_image(tmp.name, shape[:2], shape[2]).astype(np.float32)
        except DataError:
            raise RequestError(400, f"'{name}': truncated or corrupt image") from None


async def _pixels_from_upload(
    request: Request, shape: tuple[int, int, int], limits: ServeLimits
) -> tuple[np.ndarray, list[str]]:
    """The images of a multipart upload, decoded off the event loop, and their file names."""
    try:
        form = await request.form(max_files=limits.max_batch + 1)
    except Exception as exc:  # python-multipart raises several types for bad bodies
        raise RequestError(400, f"bad multipart body: {exc}") from None
    uploads = [v for _, v in form.multi_items() if hasattr(v, "read")]
    if not uploads:
        raise RequestError(400, "no image file in the upload (use the field 'image')")
    if len(uploads) > limits.max_batch:
        raise RequestError(413, f"{len(uploads)} files is over the limit of {limits.max_batch}")
    images = []
    for up in uploads:
        data = await up.read()
        images.append(
            await run_in_threadpool(
                _decode_upload, data, up.filename or "upload", shape, limits.max_image_pixels
            )
        )
    return np.stack(images), [up.filename or f"upload-{i}" for i, up in enumerate(uploads)]


class Predictor:
    """What the routes need of a model: its input shape, classes, threshold and answers."""

    shape: tuple[int, int, int]
    names: list[str]
    threshold: float
    # Refer to a human (issue 15): the target coverage and its split-conformal score threshold.
    coverage: float | None = None
    refer_q: float | None = None

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities (N,) for float32 pixels (N, H, W, C)."""
        raise NotImplementedError

    def saliency(self, pixels: np.ndarray, probs: np.ndarray) -> np.ndarray | None:
        """Grad-CAM maps (N, H, W) toward each image's predicted class (None if unavailable)."""
        return None

    def answer(self, probs: np.ndarray, ids: list[str]) -> list[dict[str, Any]]:
        """One JSON object per image (with abstention: ``decision`` and ``label_set`` too)."""
        out = [
            {
                "id": i,
                "probability": float(p),
                "class": self.names[int(p >= self.threshold)],
                "threshold": self.threshold,
            }
            for i, p in zip(ids, probs, strict=True)
        ]
        if self.refer_q is not None:  # issue 15: "decision" is a class name or "refer"
            from l1cnn.inference import Prediction, add_decisions

            rows = [Prediction(item["id"], item["probability"], item["class"]) for item in out]
            add_decisions(rows, self.names, self.refer_q)
            for item, row in zip(out, rows, strict=True):
                item.update(decision=row.decision, label_set=row.label_set)
        return out

    def calibration_info(self) -> dict[str, Any]:
        """The temperature and abstention part of ``GET /v1/model`` (issue 15)."""
        return {"temperature": self.temperature, "abstain_coverage": self.coverage}

    @property
    def temperature(self) -> float:
        """The temperature of the probabilities served (1.0: not calibrated)."""
        return 1.0

    def describe(self, limits: ServeLimits) -> dict[str, Any]:
        """What ``GET /v1/model`` returns."""
        raise NotImplementedError

    def identity(self) -> dict[str, str]:
        """The labels of ``l1cnn_model_info`` (``serve_metrics.IDENTITY_LABELS``)."""
        raise NotImplementedError


class RunPredictor(Predictor):
    """A run's Keras model behind a lock-free compiled forward function."""

    def __init__(self, run: Run, abstain: float | None = None) -> None:
        from l1cnn.loop import make_predict_fn
        from l1cnn.predict import abstain_coverage, conformal_threshold_of

        self.run = run
        self.shape = run.image_shape
        self.names = run.class_names
        self.threshold = run.threshold
        self._forward = make_predict_fn(run.calibrated_model)  # the run's (calibrated) probability
        self.coverage = abstain_coverage(run, abstain)
        self.refer_q = None if self.coverage is None else conformal_threshold_of(run, self.coverage)

    @property
    def temperature(self) -> float:
        return self.run.temperature

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self._forward(pixels)

    def saliency(self, pixels: np.ndarray, probs: np.ndarray) -> np.ndarray | None:
        from l1cnn.explain import grad_cam

        return grad_cam(self.run.model, pixels, probs >= self.threshold)

    def identity(self) -> dict[str, str]:
        """The run's folder name and its model.keras sha256 (as recorded in run.json)."""
        return {
            "run": self.run.path.name,
            "model_sha256": self.run.info.get("model_sha256", ""),
            "model_format": "keras",
            "positive_class": self.names[1],
            "threshold": f"{self.threshold:g}",
        }

    def describe(self, limits: ServeLimits) -> dict[str, Any]:
        """Classes, threshold, config, metrics summary, limits."""
        metrics = {
            split: {
                k: self.run.metrics[split].get(k)
                for k in ("n", "accuracy", "precision", "recall", "f1", "roc_auc")
            }
            for split in ("val", "test")
            if split in self.run.metrics
        }
        return {
            "run": self.run.path.name,
            "class_names": self.names,
            "positive_class": self.names[1],
            "threshold": self.threshold,
            "image_shape": list(self.shape),
            "input": "pixels 0..255, shape [H, W, C] (or [H, W] for one channel)",
            "config": config_to_dict(self.run.config),
            "metrics": metrics,
            "limits": asdict(limits),
            **self.calibration_info(),
        }


class ExportPredictor(Predictor):
    """An export folder run in its own runtime: ONNX and LiteRT need no TensorFlow.

    It answers like its run (same preprocessing, threshold and classes); saliency needs the
    Keras model, so it has none.
    """

    def __init__(self, exported: ExportedModel, abstain: float | None = None) -> None:
        self.exported = exported
        self.shape = exported.image_shape
        self.names = exported.class_names
        self.threshold = exported.threshold
        self.coverage = exported.abstain_coverage(abstain)
        self.refer_q = None if self.coverage is None else exported.refer_threshold(self.coverage)

    @property
    def temperature(self) -> float:
        return self.exported.temperature

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self.exported.predict(pixels)

    def identity(self) -> dict[str, str]:
        """The source run's folder name and the sha256 of the served file (.onnx, .tflite, or a
        SavedModel's saved_model.pb)."""
        from l1cnn.runs import file_sha256

        artifact = self.exported.artifact
        served = artifact / "saved_model.pb" if artifact.is_dir() else artifact
        source = self.exported.info.get("source_run")
        return {
            "run": Path(source).name if source else self.exported.path.name,
            "model_sha256": file_sha256(served) if served.is_file() else "",
            "model_format": self.exported.format,
            "positive_class": self.names[1],
            "threshold": f"{self.threshold:g}",
        }

    def describe(self, limits: ServeLimits) -> dict[str, Any]:
        """Classes, threshold, the export's format and parity check, limits."""
        return {
            "run": self.exported.path.name,
            "export_format": self.exported.format,
            "class_names": self.names,
            "positive_class": self.names[1],
            "threshold": self.threshold,
            "image_shape": list(self.shape),
            "input": "pixels 0..255, shape [H, W, C] (or [H, W] for one channel)",
            "parity": self.exported.info.get("parity"),
            "limits": asdict(limits),
            **self.calibration_info(),
        }


def predictor_for(source: Predictor | Run | str | Path, abstain: float | None = None) -> Predictor:
    """The predictor of a Run, a run folder, or an export folder (``l1cnn export``).

    Args:
        source: what to serve (a Predictor is returned as it is).
        abstain: conformal coverage in (0, 1) for "refer" decisions (default: the run's
            ``train.abstain``).
    """
    if isinstance(source, Predictor):
        return source
    if isinstance(source, Run):
        return RunPredictor(source, abstain)
    if is_export_folder(source):
        return ExportPredictor(load_export(source), abstain)
    return RunPredictor(load_run(source), abstain)


def create_app(
    run: Predictor | Run | str | Path,
    limits: ServeLimits | None = None,
    security: ServeSecurity | None = None,
    token: str | None = None,
    loopback: bool = True,
) -> Any:
    """The FastAPI application for ``run``, wrapped in its guards.

    From the outside in: security headers, request metrics (``/metrics``), CORS (only with
    ``allow_origin``), the rate limit, the bearer token (only with ``token``;
    ``security.open_paths()`` stay open, ``/metrics`` among them with ``metrics_public``), the
    body limit.

    Args:
        run: a Run, its folder, or an export folder (ONNX and LiteRT run without TensorFlow).
        limits: request limits (defaults: 8 MiB, 4096x4096 pixels, 64 images).
        security: token, rate-limit and CORS options (defaults: ``ServeSecurity()``).
        token: the bearer token every closed path needs; None serves without one.
        loopback: whether the address is loopback (picks the default rate limit).

    Returns:
        An ASGI application for uvicorn.
    """
    limits = limits or ServeLimits()
    security = security or ServeSecurity()
    predictor = predictor_for(run)
    metrics = ServeMetrics(predictor.identity(), predictor.names)  # issue 16: GET /metrics
    app = _api(predictor, limits, metrics)
    guarded: Any = BodyLimit(app, limits.max_request_bytes)
    if token is not None:
        guarded = BearerAuth(guarded, token, security.open_paths())
    if security.rate(loopback):
        guarded = RateLimit(guarded, security.rate(loopback))
    if security.allow_origin:
        from starlette.middleware.cors import CORSMiddleware

        guarded = CORSMiddleware(
            guarded,
            allow_origins=[security.allow_origin],
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
            max_age=600,
        )
    return SecurityHeaders(MetricsMiddleware(guarded, metrics))


def _api(predictor: Predictor, limits: ServeLimits, metrics: ServeMetrics) -> FastAPI:
    """The routes: /healthz, /v1/model, the page at /, /v1/predict, /metrics."""
    app = FastAPI(title="l1cnn", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestError)
    async def request_error(_request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, _exc: Exception) -> JSONResponse:
        # The traceback goes to the server's log, never to the client (it names files).
        return JSONResponse({"error": "internal error"}, status_code=500)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        return predictor.describe(limits)

    @app.get(METRICS_PATH)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": PAGE_CSP})

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        want_saliency = request.query_params.get("saliency", "").lower() in ("1", "true")
        if kind == "application/json":
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RequestError(400, "the body is not valid JSON") from None
            if not isinstance(body, dict) or "instances" not in body:
                raise RequestError(400, 'expected a JSON object {"instances": [...]}')
            pixels = _pixels_from_json(body["instances"], predictor.shape, limits.max_batch)
            ids = [str(i) for i in range(len(pixels))]
        elif kind == "multipart/form-data":
            pixels, ids = await _pixels_from_upload(request, predictor.shape, limits)
        else:
            raise RequestError(
                415,
                'send application/json {"instances": [...]} or a multipart/form-data image upload',
            )
        probs = await run_in_threadpool(predictor.predict, pixels)
        result: dict[str, Any] = {"predictions": predictor.answer(probs, ids)}
        metrics.count_answers(result["predictions"])  # by class, and "refer" decisions
        if want_saliency:
            maps = await run_in_threadpool(predictor.saliency, pixels, probs)
            if maps is not None:
                for item, image, cam in zip(result["predictions"], pixels, maps, strict=True):
                    item["pixels"] = np.round(image).astype(int).tolist()
                    item["saliency"] = np.round(cam, 3).tolist()
        return JSONResponse(result)

    return app


def serve(
    run: Predictor | Run | str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: ServeLimits | None = None,
    security: ServeSecurity | None = None,
    token: str | None = None,
) -> None:
    """Serve ``run`` with uvicorn until interrupted (blocks).

    Args:
        run: a Run, its folder, an export folder, or a Predictor.
        host: address to bind; loopback by default, so nothing outside this machine can reach it.
        port: TCP port.
        limits: request limits.
        security: token, TLS, rate-limit and CORS options.
        token: the bearer token (``serve_security.resolve_token``); None off loopback needs
            ``security.no_auth``.

    Raises:
        ConfigError: before anything is bound, for a non-loopback address without a token or
            ``no_auth``, bad TLS files, or an address that cannot be bound.
    """
    import uvicorn

    security = security or ServeSecurity()
    loopback = is_loopback(host)
    if token is None and not loopback and not security.no_auth:
        raise ConfigError(f"binding {host} needs a token or an explicit no_auth")
    check_tls_files(security)
    check_can_listen(host, port)
    app = create_app(run, limits, security, token, loopback)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        limit_concurrency=64,
        timeout_graceful_shutdown=5,
        server_header=False,
        ssl_certfile=security.tls_cert,
        ssl_keyfile=security.tls_key,
    )
    asyncio.run(uvicorn.Server(config).serve())


def check_can_listen(host: str, port: int) -> None:
    """Refuse a bad or busy port or an unknown host up front (uvicorn would exit the process).

    Args:
        host: address to bind.
        port: TCP port.

    Raises:
        ConfigError: naming the address and the reason.
    """
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    return host in LOOPBACK or host.startswith("127.")
