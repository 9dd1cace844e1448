"""A local ``mlflow server`` in front of a SQLite store, so concurrent Tune trials never write SQLite directly.

SQLite with several writer processes hits "database is locked" and a schema-migration race on a fresh file
(ecosystem-notes §2). The sweep driver therefore starts one server on 127.0.0.1 and hands trials its HTTP URI.
Artifacts are not proxied (``--no-serve-artifacts``): experiments created through the server get a plain file
location beside the database (``<db folder>/mlruns``), which trials on this machine write directly and which a later
``mlflow ui --backend-store-uri sqlite:///…`` run from that folder reads back.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mimlab.errors import UserError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(url: str, timeout: float = 1.0) -> bool:
    """``GET <url>/health`` answers 200."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:  # noqa: S310 (local URL)
            return resp.status == 200
    except OSError:
        return False


class MlflowServer:
    """``mlflow server`` for one SQLite store on a free local port; a context manager that stops it on exit.

    Args:
        backend_uri: ``sqlite:///abs/path/mlflow.db``.
        artifact_root: folder for artifacts (default ``<db folder>/mlruns``).
        log_path: where the server's stdout/stderr go (default ``<db folder>/mlflow-server.log``).
    """

    def __init__(self, backend_uri: str, *, artifact_root: str | None = None, log_path: str | None = None) -> None:
        if not backend_uri.startswith("sqlite:///"):
            raise ValueError("MlflowServer serves SQLite stores only")
        db = Path(backend_uri[len("sqlite:///"):]).resolve()
        self.backend_uri = f"sqlite:///{db}"
        self.artifact_root = Path(artifact_root) if artifact_root else db.parent / "mlruns"
        self.log_path = Path(log_path) if log_path else db.parent / "mlflow-server.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        """Spawn the server (returns at once; call :meth:`wait` before use)."""
        self.port = free_port()
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
               "--default-artifact-root", self.artifact_root.resolve().as_uri(), "--no-serve-artifacts",
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        env = dict(os.environ)
        env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        env.setdefault("DO_NOT_TRACK", "true")
        # MLflow 3 servers start a job runner with seven Huey consumers (GenAI jobs: none of ours), ~1.5 GB and
        # ~30 CPU-seconds of start-up on 2 cores for nothing
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        env.pop("MLFLOW_TRACKING_URI", None)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True)
        return self

    def wait(self, timeout: float | None = None) -> str:
        """Poll ``/health`` until the server answers (``$MIMLAB_MLFLOW_START_TIMEOUT``, default 240 s); its URL."""
        assert self._proc is not None, "start() first"
        if timeout is None:
            timeout = float(os.environ.get("MIMLAB_MLFLOW_START_TIMEOUT", "240"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
                raise UserError(f"mlflow server for '{self.backend_uri}' exited at start-up: {tail[0]} "
                                f"(log: {self.log_path})")
            if healthy(self.url):
                return self.url
            time.sleep(0.5)
        self.stop()
        raise UserError(f"mlflow server for '{self.backend_uri}' did not answer within {timeout:.0f} s "
                        f"(log: {self.log_path})")

    def stop(self) -> None:
        """Terminate the server (and its uvicorn workers) and wait for it."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, 15)
            except (ProcessLookupError, PermissionError):
                self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, 9)
                self._proc.wait(timeout=5)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> MlflowServer:
        self.start()
        self.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
