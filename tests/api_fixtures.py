"""Helpers for the API tests and benchmarks/api.py: a real uvicorn server in a subprocess, a fake engine,
a scriptable asset/webhook/upload HTTP server on loopback, a moto S3 server, and small media files.

TEST-ONLY: ``make_fake_app`` is a uvicorn ``--factory`` target that builds the real app with
``create_app(settings, pipeline_factory=FakeEngine)``. It reads ``LIPSYNC_TEST_FAKE_*`` variables to
shape the fake; nothing in the package reads them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the fake engine (runs inside the server subprocess) ------------------------------------------------


class FakeEngine:
    """Probes its inputs with the real lipsync.media (so bad media fails as in production), reports
    progress over a few steps, and 'renders' by copying the input video. Shaped by env (test-only):
    LIPSYNC_TEST_FAKE_SECONDS (work time per job), LIPSYNC_TEST_FAKE_LOAD_SECONDS (model load time),
    LIPSYNC_TEST_FAKE_LOAD_FAIL (1: the Wav2Lip model is missing), LIPSYNC_TEST_FAKE_MISSING (comma-separated
    engine models whose files are missing, e.g. "gfpgan"). A missing model raises the store's real offline
    error for it (which names the server's models folder)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.seconds = float(os.environ.get("LIPSYNC_TEST_FAKE_SECONDS", "0.05"))
        self.load_seconds = float(os.environ.get("LIPSYNC_TEST_FAKE_LOAD_SECONDS", "0"))
        missing = os.environ.get("LIPSYNC_TEST_FAKE_MISSING", "")
        self.missing = {m for m in missing.split(",") if m}
        if os.environ.get("LIPSYNC_TEST_FAKE_LOAD_FAIL") == "1":
            self.missing.add("wav2lip")
        self.loaded: dict[str, bool] = {"insightface": False, "wav2lip": False, "gfpgan": False}

    def load_model(self, name: str) -> None:
        if name == "insightface":  # the first model the preload loads
            time.sleep(self.load_seconds)
        if name in self.missing:
            from lipsync.models import ModelStore

            catalog = {"insightface": "buffalo_l", "wav2lip": "wav2lip_gan", "gfpgan": "gfpgan_v1.4"}[name]
            store = ModelStore(self.settings.model_copy(update={"offline": True}))
            path = store.ensure(catalog)  # raises ModelNotAvailable naming the file and its absolute path
            from lipsync.errors import ModelNotAvailable

            raise ModelNotAvailable(f"{path} is present but the fake pretends it is not (LIPSYNC_TEST_FAKE_*)")
        self.loaded[name] = True

    def models_loaded(self) -> dict[str, bool]:
        return dict(self.loaded)

    def device_info(self) -> dict[str, Any]:
        return {"gpu_available": False, "gpu_name": None, "gpu_memory_gb": None, "gpu_count": 0}

    def _work(self, video: Path, progress, stage: str) -> float:
        from lipsync.media import probe

        info = probe(video)
        steps = 5
        progress(stage, 0, steps)
        for i in range(steps):
            time.sleep(self.seconds / steps)
            progress(stage, i + 1, steps)
        return float(info.duration)

    def lipsync(self, inputs, progress):
        from lipsync.jobs.engine import EngineOutput
        from lipsync.media import probe

        probe(inputs.audio)
        for ch in inputs.characters:
            for ref in ch.reference_images:
                probe(ref)
        duration = self._work(inputs.video, progress, "lipsync")
        shutil.copyfile(inputs.video, inputs.output)
        # The settings the engine was given, so tests can see what the API made of a request.
        stats = {"fake": True, "frames": 0, "options": inputs.options.model_dump(mode="json")}
        return EngineOutput(out=inputs.output, duration=duration, stats=stats)

    def face_tracking(self, inputs, progress):
        from lipsync.jobs.engine import EngineOutput

        duration = self._work(inputs.video, progress, "track")
        shutil.copyfile(inputs.video, inputs.output)
        tracks = {"characters": [{"id": c.id, "name": c.name, "frames": []} for c in inputs.characters],
                  "fps": 25.0, "num_frames": 0}
        stats = {"fake": True, "options": inputs.options.model_dump(mode="json")}
        return EngineOutput(out=inputs.output, duration=duration, stats=stats, extra={"tracks": tracks})


def make_fake_app():
    """uvicorn --factory target (test-only)."""
    import logging

    from lipsync.api import create_app
    from lipsync.config import Settings

    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(settings, pipeline_factory=FakeEngine)


def serve_fake(port: int) -> None:
    """The fake-engine app under the same uvicorn configuration as ``lipsync serve`` (connection limits,
    header timeout): what the tests probe is what production runs."""
    from lipsync.api.server import serve
    from lipsync.config import Settings

    app = make_fake_app()
    serve(app, Settings(), host="127.0.0.1", port=port)


# --- the server subprocess ------------------------------------------------------------------------------


@dataclass
class ApiServer:
    """``python -m uvicorn`` (fake engine) or ``lipsync serve`` (real engine) on a loopback port."""

    env: dict[str, str]
    work_dir: Path
    real: bool = False
    port: int = field(default_factory=free_port)
    api_key: str | None = None
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=timeout, trust_env=False)

    def start(self, ready_timeout: float = 60.0) -> ApiServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_")}
        env.update({"LIPSYNC_WORK_DIR": str(self.work_dir), "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"})
        if self.api_key:
            env["LIPSYNC_API_KEY"] = self.api_key
        env.update(self.env)
        if self.real:
            script = Path(PYTHON).parent / "lipsync"  # the installed console entry point
            launcher = [str(script)] if script.exists() else [PYTHON, "-c", "from lipsync.cli import main; main()"]
            cmd = [*launcher, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        else:
            cmd = [PYTHON, "-c", f"import sys; sys.path.insert(0, {str(TESTS)!r}); import api_fixtures; "
                   f"api_fixtures.serve_fake({self.port})"]
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.work_dir / f"server-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
        log.close()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=1.0, trust_env=False).status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        """A crash: no shutdown code runs."""
        self.stop(signal.SIGKILL)

    def __enter__(self) -> ApiServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_final(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while time.monotonic() < deadline:
                job = c.get(f"/jobs/{job_id}").json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    return job
                time.sleep(0.05)
        raise TimeoutError(f"job {job_id} did not finish in {timeout}s:\n{self.log()}")


# --- a scriptable HTTP server: assets, webhooks, upload targets -----------------------------------------


@dataclass
class Asset:
    body: bytes = b""
    content_type: str = "application/octet-stream"
    status: int = 200
    fail_first: int = 0  # answer 503 to the first N requests (retry tests)
    stall: bool = False  # send headers and a few bytes, then go silent
    redirect_to: str | None = None
    declared_length: int | None = None  # Content-Length to claim (None: the real one)
    trickle_s: float | None = None  # send the body one byte every this many seconds
    hits: int = 0


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class AssetServer:
    """GET serves ``assets``; PUT and POST are recorded (PUT answers ``put_status``, with an S3-style
    XML reason for 403). Thread-safe; runs in the test process."""

    def __init__(self) -> None:
        self.assets: dict[str, Asset] = {}
        self.received: list[Received] = []
        self.put_status: dict[str, int] = {}
        self.put_trickle: dict[str, float] = {}  # path -> answer the PUT one byte every this many seconds
        self.put_endless: set[str] = set()  # paths answering the PUT with 403 and a body that never ends
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _asset_handler(self))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> AssetServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def add(self, path: str, body: bytes = b"", **kwargs: Any) -> str:
        self.assets["/" + path.lstrip("/")] = Asset(body=body, **kwargs)
        return self.url(path)

    def add_file(self, path: str, file: Path, content_type: str) -> str:
        return self.add(path, Path(file).read_bytes(), content_type=content_type)

    def posts(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.method == "POST" and r.path == "/" + path.lstrip("/")]


def _asset_handler(server: AssetServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # quiet
            pass

        def _reply(self, status: int, body: bytes = b"", ctype: str = "text/plain",
                   extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _trickle(self, data: bytes, every_s: float) -> None:
            """One byte at a time, until done, the client goes away or the server stops."""
            for i in range(len(data)):
                if server.stopping.wait(every_s):
                    return
                try:
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                except OSError:
                    return

        def _read_body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def do_POST(self):
            body = self._read_body()
            with server.lock:
                server.received.append(Received("POST", self.path, dict(self.headers), body))
            self._reply(200, b"ok")

        def do_PUT(self):
            body = self._read_body()
            with server.lock:
                server.received.append(Received("PUT", self.path, dict(self.headers), body))
            status = server.put_status.get(self.path.split("?")[0], 200)
            trickle = server.put_trickle.get(self.path.split("?")[0])
            if trickle is not None:
                self._trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", trickle)
                return
            if self.path.split("?")[0] in server.put_endless:
                self.send_response(403)
                self.send_header("Content-Length", str(1 << 40))
                self.end_headers()
                try:
                    while not server.stopping.is_set():
                        self.wfile.write(b"<Error>" * 10000)
                except OSError:
                    pass
                return
            if status == 403:
                xml = (b"<?xml version='1.0'?><Error><Code>AccessDenied</Code>"
                       b"<Message>Request has expired</Message></Error>")
                self._reply(403, xml, "application/xml")
            else:
                self._reply(status, b"")

        def do_GET(self):
            path = self.path.split("?")[0]
            with server.lock:
                asset = server.assets.get(path)
                if asset is not None:
                    asset.hits += 1
                    hit = asset.hits
            if asset is None:
                self._reply(404, b"<html><body>Not Found</body></html>", "text/html")
                return
            if hit <= asset.fail_first:
                self._reply(503, b"try again", "text/plain")
                return
            if asset.redirect_to:
                self._reply(302, b"", extra={"Location": asset.redirect_to})
                return
            if asset.status != 200:
                self._reply(asset.status, asset.body, asset.content_type)
                return
            self.send_response(200)
            self.send_header("Content-Type", asset.content_type)
            length = asset.declared_length if asset.declared_length is not None else len(asset.body)
            if asset.declared_length != -1:
                self.send_header("Content-Length", str(length))
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                if asset.trickle_s is not None:
                    self._trickle(asset.body, asset.trickle_s)
                    return
                if asset.stall:
                    self.wfile.write(asset.body[:16])
                    self.wfile.flush()
                    server.stopping.wait(30)
                    return
                for i in range(0, len(asset.body), 65536):
                    self.wfile.write(asset.body[i : i + 65536])
            except OSError:
                pass

    return Handler


# --- moto S3 on loopback --------------------------------------------------------------------------------


@contextlib.contextmanager
def moto_s3(bucket: str = "results") -> Iterator[tuple[Any, str]]:
    """A real moto S3 server on loopback; yields (boto3 client, endpoint url)."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                          aws_secret_access_key="test")
        s3.create_bucket(Bucket=bucket)
        yield s3, endpoint
    finally:
        server.stop()


def presigned_put(s3: Any, bucket: str, key: str, expires: int = 600) -> str:
    return s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": key, "ContentType": "video/mp4"},
                                     ExpiresIn=expires)


# --- small media ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Media:
    video: Path  # synthetic face video with audio (H.264 MP4)
    audio: Path  # WAV
    reference: Path  # JPEG
    truncated: Path  # the video cut in half (no moov atom)
    no_face_video: Path
    no_face_image: Path


def make_media(folder: Path, *, seconds: float = 1.0, fps: int = 10) -> Media:
    import cv2

    from pipeline_fixtures import (
        FaceSpec,
        background,
        moving_box,
        write_reference_image,
        write_speechlike_wav,
        write_synthetic_video,
        write_video,
    )

    folder.mkdir(parents=True, exist_ok=True)
    video = write_synthetic_video(folder / "face.mp4", [FaceSpec("red", moving_box(60, 40, 96, 112, dx=1))],
                                  width=256, height=192, fps=fps, seconds=seconds)
    audio = write_speechlike_wav(folder / "speech.wav", seconds)
    reference = write_reference_image(folder / "ref.jpg", "red")
    data = video.read_bytes()
    truncated = folder / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    bg = background(256, 192, seed=3)
    no_face_video = write_video(folder / "noface.mp4", lambda i: bg, int(fps * seconds), fps)
    no_face_image = folder / "noface.jpg"
    cv2.imwrite(str(no_face_image), background(160, 160, seed=5))
    return Media(video, audio, reference, truncated, no_face_video, no_face_image)


def scratch_leftovers(work_dir: Path) -> list[str]:
    """Files left in the server's per-job scratch space (must be none once jobs ended)."""
    tmp = work_dir / "tmp"
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*")) if tmp.exists() else []


def temp_leftovers(tmpdir: Path) -> list[str]:
    """Files left in a server's system temp dir (TMPDIR), which jobs must never use. ``.ses`` is
    onnxruntime's telemetry session id, written once when it is imported (by the VAD or the InsightFace
    backend of a real pipeline): not job data."""
    return sorted(p.name for p in Path(tmpdir).iterdir() if p.name != ".ses")


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
