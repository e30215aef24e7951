"""A real redis-server (the Debian package) on a free loopback port with its own temp directory, AOF on,
and worker processes of the cluster (fake or real engine) for the Redis tests and benchmarks/queue_throughput.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from api_fixtures import PYTHON, REPO, TESTS, free_port

REDIS_SERVER = shutil.which("redis-server")

# Small timeouts so crash recovery takes seconds in the tests (production defaults: 30 s, 10 %).
FAST_CLUSTER_ENV = {
    "LIPSYNC_HEARTBEAT_TIMEOUT_S": "2",
    "LIPSYNC_MAINTENANCE_CHANCE": "1.0",
    "LIPSYNC_ALLOW_PRIVATE_URLS": "true",
}


@dataclass
class RedisServer:
    """``redis-server`` with ``appendonly yes`` and ``appendfsync always``: every acknowledged write is on
    disk, so even a SIGKILL of Redis loses nothing."""

    dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> RedisServer:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
               "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
               "--protected-mode", "no", "--logfile", str(self.dir / "redis.log")]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    # Loading the AOF answers LOADING errors until done: ping succeeds only after.
                    client.close()
                    return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()}")
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start: {self.log()}")

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self, sig: int = signal.SIGKILL) -> None:
        """Stop (a crash with SIGKILL by default) and start again on the same port and directory."""
        self.stop(sig)
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class WorkerProcess:
    """``tests/redis_worker_main.py`` (the fake engine) or ``lipsync worker`` (real) in a subprocess."""

    env: dict[str, str]
    work_dir: Path
    worker_id: str
    real: bool = False
    metrics_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def start(self, ready_timeout: float = 120.0) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_")}
        self.work_dir.mkdir(parents=True, exist_ok=True)
        ready = self.work_dir / f"{self.worker_id}.ready"
        ready.unlink(missing_ok=True)
        env.update({"LIPSYNC_WORK_DIR": str(self.work_dir), "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "INFO",
                    "LIPSYNC_TEST_WORKER_ID": self.worker_id, "LIPSYNC_TEST_READY_FILE": str(ready),
                    "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{TESTS}"})
        env.update(self.env)
        if self.real:
            cmd = [PYTHON, "-c", "from lipsync.cli import main; main()", "worker", "--metrics-port",
                   str(self.metrics_port), "--metrics-host", "127.0.0.1", "--device", "cpu"]
        else:
            cmd = [PYTHON, str(TESTS / "redis_worker_main.py"), str(self.metrics_port)]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
        log.close()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.log()}")
            # The fake writes a ready file; the real CLI logs once it consumes (models loaded first).
            if ready.exists() if not self.real else "consuming queue" in self.log():
                return self
            time.sleep(0.05)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"worker did not become ready:\n{self.log()}")

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        return self.work_dir / f"{self.worker_id}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:] if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
