"""Output pre-checks, run by each command before any work: an ``--out`` that is a file, or a folder holding another
run's outputs, is refused up front (never found out after the computation, never silently mixed or overwritten)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from mimlab.errors import UserError

SALIENCY_OUTPUTS = ("results.json", "per_image.csv", "maps.npz", "metrics.png")
EXPLAIN_OUTPUTS = ("grid.png",)
KNN_OUTPUTS = ("knn.json",)
LINEAR_OUTPUTS = ("linear.json", "linear_curve.png")
STUDY_OUTPUTS = ("study.json", "study.txt")


def check_out_folder(out: str | os.PathLike | None, holds: Iterable[str], *, option: str = "--out",
                     patterns: Iterable[str] = ()) -> None:
    """Refuse ``out`` when it is an existing file, or a folder already holding any of ``holds`` (file names) or a
    file matching ``patterns`` (globs): another run's outputs, which new results would mix with or overwrite.

    Remote URLs (``s3://…``) are not checked here.
    """
    if out is None or "://" in os.fspath(out):
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} '{out}' is an existing file; expected a folder for the outputs")
    if not path.is_dir():
        return
    found = [name for name in holds if (path / name).exists()]
    for pattern in patterns:
        found += sorted(p.name for p in path.glob(pattern))[:3]
    if found:
        raise UserError(f"{option} '{out}' already holds another run's outputs ({', '.join(found[:4])}); "
                        "choose a new folder or remove them first")


def check_out_file(path: str | os.PathLike | None, option: str) -> None:
    """Refuse an output file path that is an existing folder."""
    if path is not None and Path(path).is_dir():
        raise UserError(f"{option} '{path}' is an existing folder; expected a file name")


def unique_stems(paths: Sequence[str | os.PathLike]) -> list[str]:
    """File stems for output names; inputs sharing a name (``a/x.png``, ``b/x.png``) get ``001-x``, ``002-x`` so no
    output overwrites another."""
    stems = [Path(p).stem for p in paths]
    dupes = {s for s in stems if stems.count(s) > 1}
    return [f"{i + 1:03d}-{s}" if s in dupes else s for i, s in enumerate(stems)]
