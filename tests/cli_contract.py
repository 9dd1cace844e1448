"""The one error contract every CLI bad-input test asserts (import it, or use the ``cli_error`` fixture).

A command given bad input must:
- exit with code 2;
- print exactly one line starting with ``error:`` on stderr, naming what the test expects (file, key or value);
- print no traceback (on stdout or stderr);
- answer within a bounded time (no hang, no 4-minute retry loop);
- leave every file the test names in ``protect`` byte-for-byte as it was.

``subprocess=True`` runs ``python -m mimlab`` in a child process with a hard timeout, for paths that could hang
(network endpoints, Ray start-up) or that must be seen exactly as a user's shell sees them. The default runs the
Typer app in-process through ``CliRunner`` (fast) on the main thread, with a SIGALRM deadline.
"""

from __future__ import annotations

import hashlib
import os
import subprocess as _subprocess
import sys
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def error_line(self) -> str:
        """The single ``error:`` line (the contract guarantees there is exactly one)."""
        return next(line for line in self.stderr.splitlines() if line.startswith("error:"))


def _digest(paths: Iterable[Path]) -> dict[str, str]:
    """sha256 of every file under each path (a file, or a folder walked recursively); missing paths map to ''."""
    out: dict[str, str] = {}
    for root in map(Path, paths):
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
        if not files:
            out[str(root)] = ""
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


class _NoAnswer(BaseException):
    """Raised by the alarm: the command did not answer in time (a BaseException so the CLI cannot swallow it)."""


def _run_in_process(args: Sequence[str], timeout: float, env: dict[str, str] | None) -> CliResult:
    """Run the Typer app on this (main) thread — Ray and signal handlers need it — under a SIGALRM deadline."""
    from typer.testing import CliRunner

    from mimlab.cli import app

    def _alarm(signum, frame):  # noqa: ARG001
        raise _NoAnswer()

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        r = CliRunner().invoke(app, list(args), env=env)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if isinstance(r.exception, _NoAnswer):
        raise AssertionError(f"`platform {' '.join(args)}` gave no answer within {timeout:.0f} s")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        import traceback

        tb = "".join(traceback.format_exception(r.exception))
        return CliResult(r.exit_code, r.stdout, r.stderr + "\nTraceback (uncaught in CliRunner):\n" + tb)
    return CliResult(r.exit_code, r.stdout, r.stderr)


def _run_subprocess(args: Sequence[str], timeout: float, env: dict[str, str] | None, cwd: Path | None) -> CliResult:
    full_env = {**os.environ, **(env or {})}
    try:
        p = _subprocess.run([sys.executable, "-m", "mimlab", *args], capture_output=True, text=True,
                            timeout=timeout, env=full_env, cwd=cwd, stdin=_subprocess.DEVNULL)
    except _subprocess.TimeoutExpired as exc:  # pragma: no cover - the failure this contract exists to catch
        raise AssertionError(f"`platform {' '.join(args)}` gave no answer within {timeout:.0f} s") from exc
    return CliResult(p.returncode, p.stdout, p.stderr)


def run_cli(args: Sequence[str], *, timeout: float = 60.0, subprocess: bool = False,
            env: dict[str, str] | None = None, cwd: Path | None = None) -> CliResult:
    """Run ``platform ARGS`` and return its exit code and streams (no contract asserted)."""
    args = [str(a) for a in args]
    if subprocess:
        return _run_subprocess(args, timeout, env, cwd)
    assert cwd is None, "cwd= needs subprocess=True (in-process runs share the test's working directory)"
    return _run_in_process(args, timeout, env)


def assert_user_error(args: Sequence[str], *expected: str, protect: Iterable[Path] = (), timeout: float = 60.0,
                      subprocess: bool = False, env: dict[str, str] | None = None,
                      cwd: Path | None = None) -> CliResult:
    """Run ``platform ARGS`` and assert the error contract; ``expected`` are substrings of the ``error:`` line.

    Args:
        args: the command line after ``platform``.
        *expected: each must appear in the one ``error:`` line (case-sensitive): the file, key or value, and what
            was expected.
        protect: files or folders of the user's that must be unchanged afterwards (hashed before and after).
        timeout: the answer must come within this many seconds.
        subprocess: run ``python -m mimlab`` in a child process instead of in-process.
    """
    protect = list(protect)
    before = _digest(protect)
    r = run_cli(args, timeout=timeout, subprocess=subprocess, env=env, cwd=cwd)
    shown = f"exit {r.exit_code}\n--- stdout ---\n{r.stdout}\n--- stderr ---\n{r.stderr}"
    assert r.exit_code == 2, shown
    assert "Traceback" not in r.stdout and "Traceback" not in r.stderr, shown
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"expected exactly one 'error:' line on stderr\n{shown}"
    for part in expected:
        assert part in errors[0], f"{part!r} not in the error line {errors[0]!r}"
    assert _digest(protect) == before, f"the command changed files it must not touch: {protect}"
    return r
