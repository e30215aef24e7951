"""A real HTTP file server on loopback for download tests.

Each served path is a :class:`Route` with switches for the failure modes a downloader must survive:
404 (any status), ignoring Range, stalling mid-body, dropping the connection after N bytes, throttling.
Every request is logged (method, path, Range header) so tests can assert what the client did.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    ignore_range: bool = False
    stall_after: int | None = None  # stop at this byte offset of the file and go silent (every time)
    drop_after: int | None = None  # send this many bytes of a response, then close the connection
    drop_times: int = 1  # how many requests get dropped (later ones complete)
    throttle_s: float = 0.0  # pause between 64 KiB chunks (makes transfers overlap in time)
    hits: int = 0

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class Logged:
    method: str
    path: str
    range: str | None


@dataclass
class LocalServer:
    routes: dict[str, Route] = field(default_factory=dict)
    log: list[Logged] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})

    def start(self) -> LocalServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def add(self, path: str, body: bytes = b"", **kwargs) -> Route:
        route = Route(body=body, **kwargs)
        self.routes["/" + path.lstrip("/")] = route
        return route

    def gets(self, path: str) -> list[Logged]:
        return [entry for entry in self.log if entry.method == "GET" and entry.path == "/" + path.lstrip("/")]


def _make_handler(server: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # keep test output quiet
            pass

        def do_HEAD(self):
            self._serve(head=True)

        def do_GET(self):
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            range_header = self.headers.get("Range")
            with server._lock:
                server.log.append(Logged(self.command, self.path, range_header))
                route = server.routes.get(self.path)
                if route is not None and not head:
                    route.hits += 1
                    hit = route.hits
            if route is None or route.status != 200:
                status = 404 if route is None else route.status
                payload = f"status {status}".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                if not head:
                    self.wfile.write(payload)
                return
            body, start = route.body, 0
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if match and not route.ignore_range:
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Connection", "close")
            self.end_headers()
            if head:
                return
            self._send_body(route, body[start:], start, dropped=hit <= route.drop_times)

        def _send_body(self, route: Route, data: bytes, start: int, dropped: bool) -> None:
            limit = len(data)
            if route.drop_after is not None and dropped:
                limit = min(limit, route.drop_after)
            if route.stall_after is not None:
                limit = max(0, min(limit, route.stall_after - start))
            sent = 0
            try:
                while sent < limit:
                    chunk = data[sent : min(limit, sent + 65536)]
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    sent += len(chunk)
                    if route.throttle_s:
                        time.sleep(route.throttle_s)
                if route.stall_after is not None and sent < len(data):
                    server._stop.wait(30)  # go silent; the client must time out
                if sent < len(data):
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # the client gave up first

    return Handler


@contextmanager
def serving() -> Iterator[LocalServer]:
    """A started LocalServer, stopped on exit (wrap it in a fixture in the test module)."""
    server = LocalServer().start()
    try:
        yield server
    finally:
        server.stop()


def closed_port_url(path: str = "file.bin") -> str:
    """A loopback URL nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{path}"


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (incompressible, so sizes are real)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def download_in_subprocess(url: str, dest: str, sha256: str, results) -> None:
    """Target for multiprocessing: download and report the outcome through a queue."""
    from lipsync.models.download import DownloadOptions, download

    try:
        path = download(url, Path(dest), sha256, options=DownloadOptions(retries=0, read_timeout=10))
        results.put(("ok", str(path)))
    except Exception as exc:  # report any failure to the parent test
        results.put(("error", f"{type(exc).__name__}: {exc}"))
