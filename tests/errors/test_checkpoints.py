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
