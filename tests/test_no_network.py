"""No network at run time: one explain, one pretrain (local mode) and one tune sweep (one point, small shards) run in
child processes whose sockets may only connect to loopback (127.0.0.0/8, ::1) or Unix sockets; every other attempt
is refused and logged, and the test fails on any (Ray's cloud-metadata probe included)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

GUARD = r'''
import ipaddress, os, socket

_LOG = os.environ["NONET_LOG"]
_real_connect, _real_connect_ex = socket.socket.connect, socket.socket.connect_ex


def _allowed(sock, address):
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return True
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _check(sock, address):
    if not _allowed(sock, address):
        with open(_LOG, "a") as fh:
            fh.write(f"{os.getpid()} {address!r}\n")
        raise OSError(101, f"network disabled in this test: connect to {address!r}")


def connect(self, address):
    _check(self, address)
    return _real_connect(self, address)


def connect_ex(self, address):
    _check(self, address)
    return _real_connect_ex(self, address)


socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
'''


@pytest.fixture()
def offline_env(tmp_path):
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "blocked.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(guard), str(ROOT / "platform")]),
           "NONET_LOG": str(log), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "MIMLAB_EXPERIMENTS_DIR": str(ROOT / "tests" / "tune" / "experiments")}
    return env, log


def _run(args, env, cwd, timeout=240):
    p = subprocess.run([sys.executable, "-m", "mimlab", *map(str, args)], env=env, cwd=cwd, capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p


def test_the_guard_really_refuses_a_non_loopback_connection(offline_env, tmp_path):
    env, log = offline_env
    code = "import socket\ntry:\n    socket.create_connection(('192.0.2.1', 80), timeout=1)\nexcept OSError as e:\n" \
           "    print('refused', e)\n"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert "network disabled in this test" in p.stdout
    assert "192.0.2.1" in log.read_text()


ONE_POINT_SWEEP = """\
name: offline-sweep
description: one-point sweep of the no-network test
thesis: none (test fixture)
default_profile: tiny
base:
  masking: {prob: 1.0}
sweep:
  masking.strategy: [block]
labels: {block: block}
evaluation: {knn_ks: [5], linear_epochs: 1}
plot: {x: masking.strategy, metrics: [knn_top1], baselines: [block]}
"""


def test_explain_pretrain_and_tune_run_without_network(offline_env, tmp_path):

    sys.path.insert(0, str(ROOT / "tests" / "errors"))
    from error_inputs import TINY_RECIPE, png_bytes

    from mimlab.data.synth import write_synthetic

    env, log = offline_env
    data = tmp_path / "ds"  # small shards (train/ + val/): nothing to generate in the children
    write_synthetic(data, num_images=48, size=32, classes=2, seed=0, split_val=0.25)
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(0))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    sweep_dir = tmp_path / "sweep"  # its own folder and MLflow store: two processes migrating one SQLite file race
    sweep_dir.mkdir()
    sweep = sweep_dir / "offline-sweep.yaml"
    sweep.write_text(ONE_POINT_SWEEP)
    shutil.copy(ROOT / "tests" / "tune" / "experiments" / "profiles.yaml", sweep_dir / "profiles.yaml")
    # the sweep runs beside pretrain + explain (each command starts its own Ray; most of their time is start-up)
    with open(tmp_path / "tune.out", "w") as out, open(tmp_path / "tune.err", "w") as err:
        tune = subprocess.Popen([sys.executable, "-m", "mimlab", "tune", str(sweep), "--data", str(data), "--seeds",
                                 "1", "--storage-path", str(tmp_path / "tune"),
                                 "--tracking-uri", f"sqlite:///{sweep_dir / 'mlflow.db'}"], env=env, cwd=sweep_dir,
                                stdout=out, stderr=err, text=True, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            pre = _run(["pretrain", recipe, "--workers", "0", "--storage-path", tmp_path / "runs", "--data", data,
                        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], env, tmp_path)
            ckpt = pre.stdout.split("checkpoint: ", 1)[1].split()[0]
            _run(["explain", image, "-m", ckpt, "--method", "raw", "--out", tmp_path / "ex"], env, tmp_path)
            assert (tmp_path / "ex" / "grid.png").is_file()
            code = tune.wait(timeout=400)
        finally:
            if tune.poll() is None:  # a failure above: stop the sweep with its Ray and MLflow server children
                os.killpg(tune.pid, signal.SIGKILL)
                tune.wait()
    assert code == 0, (tmp_path / "tune.out").read_text()[-2000:] + (tmp_path / "tune.err").read_text()[-4000:]
    assert "[1/1]" in (tmp_path / "tune.out").read_text()     # the sweep's one trial finished
    # Every command succeeded with the network refused, and none even tried: not Ray's cloud-metadata probe of
    # 169.254.169.254 either (mimlab.runtime.ray_env starts the dashboard without it).
    attempts = log.read_text().splitlines() if log.exists() else []
    assert not attempts, attempts
