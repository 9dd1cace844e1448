"""The sweep's private MLflow server: it answers on 127.0.0.1 and starts no GenAI job runner."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.request import urlopen

from mimlab.runtime.mlflow_server import MlflowServer


def _descendants(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively, read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_private_server_answers_and_starts_no_job_runner(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    with MlflowServer(f"sqlite:///{tmp_path / 'mlflow.db'}") as server:
        assert server.url.startswith("http://127.0.0.1:")
        with urlopen(f"{server.url}/health", timeout=10) as answer:
            assert answer.status == 200
        commands = []
        for pid in _descendants(os.getpid()):
            try:
                commands.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
        assert any("mlflow" in c and "server" in c for c in commands)      # the server is among them
        assert not [c for c in commands if "huey" in c or "_job_runner" in c]
