"""Checkpoints: a corrupt or truncated newest checkpoint falls back to the previous one kept (one line saying so);
none readable is one error line; state.pt is loaded with weights_only=True (no arbitrary unpickling)."""

from __future__ import annotations

import pickle

import pytest
import torch

from mimlab.errors import UserError
from mimlab.pretrain.checkpoint import LocalCheckpoints, load_state

CORRUPTIONS = {
    "truncated": lambda raw: raw[: len(raw) // 3],
    "bit-flipped": lambda raw: bytes(b ^ 0x5A if 64 <= i < 256 else b for i, b in enumerate(raw)),
    "empty": lambda raw: b"",
    "not-a-checkpoint": lambda raw: b"hello",
}


def _write(root, epoch: int) -> None:
    folder = root / f"checkpoint-{epoch:04d}"
    folder.mkdir(parents=True)
    torch.save({"epoch": epoch, "student": {"w": torch.full((4,), float(epoch))}}, folder / "state.pt")
    (root / "latest").write_text(folder.name)


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one_with_one_line(kind, tmp_path, capsys):
    _write(tmp_path, 0)
    _write(tmp_path, 1)
    state_file = tmp_path / "checkpoint-0001" / "state.pt"
    state_file.write_bytes(CORRUPTIONS[kind](state_file.read_bytes()))
    folder = LocalCheckpoints(tmp_path).latest()
    assert folder == tmp_path / "checkpoint-0000"
    assert load_state(folder)["epoch"] == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "checkpoint-0001" in lines[0] and "checkpoint-0000" in lines[0], lines


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_no_readable_checkpoint_left_is_one_error(kind, tmp_path):
    _write(tmp_path, 0)
    _write(tmp_path, 1)
    for e in (0, 1):
        f = tmp_path / f"checkpoint-{e:04d}" / "state.pt"
        f.write_bytes(CORRUPTIONS[kind](f.read_bytes()))
    with pytest.raises(UserError, match="no readable checkpoint left") as err:
        LocalCheckpoints(tmp_path).latest()
    assert "\n" not in str(err.value)


class _Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_state_is_loaded_weights_only_so_a_pickled_payload_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "checkpoint-0000"
    folder.mkdir()
    with open(folder / "state.pt", "wb") as fh:
        pickle.dump({"epoch": 0, "evil": _Boom()}, fh)
    with pytest.raises(UserError, match="unreadable"):
        load_state(folder)
    assert not (tmp_path / "PWNED").exists()


def test_resume_from_corrupt_checkpoints_is_one_error_line(cli_error, recipe, tmp_path):
    """`platform pretrain` (local mode) refuses before starting anything when no checkpoint of the run is readable."""
    runs = tmp_path / "runs"
    _write(runs / "tiny", 0)
    (runs / "tiny" / "checkpoint-0000" / "state.pt").write_bytes(b"\x00" * 10)
    cli_error(["pretrain", recipe, "--workers", "0", "--storage-path", runs, "--tracking-uri",
               f"sqlite:///{tmp_path / 'm.db'}"], "no readable checkpoint left", str(runs / "tiny"),
              protect=[runs, recipe])


# ------------------------------------------------------------------ Ray Train (--workers >= 1): the same rule
def _write_ray_run(run, epochs=(0, 1)) -> list[str]:
    """A Ray Train run folder: its checkpoint snapshot and one ``checkpoint_<time>`` folder per epoch (oldest first)."""
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    run.mkdir(parents=True)
    (run / CHECKPOINT_MANAGER_SNAPSHOT_FILENAME).write_text("{}")
    names = []
    for e in epochs:
        name = f"checkpoint_2026-01-01_00-00-0{e}.000000"
        (run / name).mkdir()
        torch.save({"epoch": e, "student": {"w": torch.full((4,), float(e))}}, run / name / "state.pt")
        names.append(name)
    return names


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_ray_train_resume_check_picks_the_previous_checkpoint_with_one_line(kind, tmp_path, capsys):
    from mimlab.runtime.train import check_resume

    old, new = _write_ray_run(tmp_path / "run")
    state_file = tmp_path / "run" / new / "state.pt"
    state_file.write_bytes(CORRUPTIONS[kind](state_file.read_bytes()))
    assert check_resume(str(tmp_path), "run", local=False) == {"chosen": old, "skip": [new]}
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and new in lines[0] and old in lines[0] and "(epoch 0)" in lines[0], lines


def test_ray_train_resume_check_without_corruption_is_silent_and_picks_the_newest(tmp_path, capsys):
    from mimlab.runtime.train import check_resume

    old, new = _write_ray_run(tmp_path / "run")
    assert check_resume(str(tmp_path), "run", local=False) == {"chosen": new, "skip": []}
    assert check_resume(str(tmp_path), "fresh", local=False) == {"chosen": None, "skip": []}
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_ray_train_resume_check_with_no_readable_checkpoint_is_one_error(kind, tmp_path):
    from mimlab.runtime.train import check_resume

    for name in _write_ray_run(tmp_path / "run"):
        f = tmp_path / "run" / name / "state.pt"
        f.write_bytes(CORRUPTIONS[kind](f.read_bytes()))
    with pytest.raises(UserError, match="no readable checkpoint left") as err:
        check_resume(str(tmp_path), "run", local=False)
    assert "\n" not in str(err.value) and str(tmp_path / "run") in str(err.value)


def test_ray_train_worker_resumes_from_the_drivers_pick_when_rays_latest_is_unreadable(tmp_path, monkeypatch, capsys):
    """The worker side of the rule: Ray hands back its latest checkpoint (corrupt); the worker loads the driver's
    pick instead, silently (the driver already said so)."""
    import ray.train

    from mimlab.runtime.train import _TrainSession

    old, new = _write_ray_run(tmp_path / "run")
    (tmp_path / "run" / new / "state.pt").write_bytes(b"\x00" * 10)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: ray.train.Checkpoint(str(tmp_path / "run" / new)))
    session = object.__new__(_TrainSession)  # no Ray Train context here: set what __init__ would
    session.rank, session.world, session.local = 0, 1, None
    session.resume = {"chosen": old, "skip": [new]}
    state, where = session.latest()
    assert state["epoch"] == 0 and where == str(tmp_path / "run" / old)
    assert capsys.readouterr().err == ""
    # a checkpoint written by this run (after a worker restart) that is unreadable: the driver's pick, one line
    session.resume = {"chosen": old, "skip": []}
    state, where = session.latest()
    assert state["epoch"] == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and new in lines[0] and old in lines[0], lines


# ------------------------------------------------------------------ the CLI, local mode (--workers 0), end to end
def test_pretrain_resumes_from_the_previous_checkpoint_when_the_newest_is_truncated(cli_error, recipe, shards,
                                                                                     tmp_path):
    from cli_contract import run_cli

    runs, db = tmp_path / "runs", f"sqlite:///{tmp_path / 'm.db'}"
    args = ["pretrain", recipe, "--workers", "0", "--storage-path", runs, "--tracking-uri", db, "--data", shards,
            "--epochs", "2"]
    first = run_cli(args, timeout=120)
    assert first.exit_code == 0, first.stderr
    newest = runs / "tiny" / "checkpoint-0001" / "state.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    again = run_cli(args, timeout=120)
    assert again.exit_code == 0, again.stderr
    notes = [ln for ln in again.stderr.splitlines() if "checkpoint-0001" in ln]
    assert len(notes) == 1 and notes[0].startswith("warning:") and "checkpoint-0000" in notes[0], again.stderr
    # it continued from epoch 0: epoch 1 trained again, its checkpoint readable once more
    assert str(runs / "tiny" / "checkpoint-0001") in again.stdout
    assert load_state(runs / "tiny" / "checkpoint-0001")["epoch"] == 1
    # every checkpoint kept corrupt: one error line, nothing of the run touched
    for f in (runs / "tiny").glob("checkpoint-*/state.pt"):
        f.write_bytes(f.read_bytes()[:100])
    cli_error(args, "no readable checkpoint left", "checkpoint-0001", "checkpoint-0000", protect=[runs, recipe])
