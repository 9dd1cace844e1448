"""Seeded random samples of shard rows, read without decoding (or even reading) the rest of the split.

Pure numpy/pyarrow/fsspec (no Ray): the training stream (:mod:`mimlab.data.pipeline`) and the online k-NN monitor
both draw from here.

* :func:`row_counts` — rows and row-group sizes per shard, from the Parquet footers only.
* :func:`epoch_windows` — one epoch's sample of ``n`` rows of the whole split, seeded by ``(seed, epoch)``, cut into
  *windows* of about ``buffer`` rows; a read task reads one window and emits its rows in random order, so a window
  is a shuffle buffer over the encoded bytes (before decoding and cropping).
* :func:`read_rows` — the given rows of one shard, reading only the row groups that hold them.
* :func:`sample_split` — a seeded random sample of a split, read in batches (the k-NN bank and queries).
* :func:`batch_classes` — mean number of distinct labels per batch (single-class batches show as 1.0).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mimlab.errors import UserError

# A window mixes rows of at least this many shards (or all of them), reading a shard at most ``passes`` times an
# epoch (see :func:`epoch_windows`).
MIX_FILES = 16


@dataclass(frozen=True)
class ShardCounts:
    """Rows of one shard file and the sizes of its row groups (from the footer)."""

    path: str
    rows: int
    groups: tuple[int, ...]


def row_counts(fs, files: list[str]) -> list[ShardCounts]:
    """Footer-only row counts of each shard (no column data is read)."""
    out = []
    for path in files:
        with fs.open(path, "rb") as handle:
            meta = pq.ParquetFile(handle).metadata
        out.append(ShardCounts(path, meta.num_rows, tuple(meta.row_group(g).num_rows
                                                          for g in range(meta.num_row_groups))))
    return out


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([k % (1 << 32) for k in keys])


def draw_rows(counts: list[int], n: int | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(file index, row within file)`` of ``n`` rows drawn uniformly without replacement, in random order
    (``n=None`` or ``n >= total`` ⇒ every row once)."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(offsets[-1])
    rows = rng.permutation(total) if n is None or n >= total else rng.choice(total, size=n, replace=False)
    file_of = np.searchsorted(offsets, rows, side="right") - 1
    return file_of, rows - offsets[file_of]


def epoch_windows(counts: list[int], n: int | None, *, seed: int, epoch: int, buffer: int,
                  shard: tuple[int, int] | None = None) -> list[list[tuple[int, np.ndarray]]]:
    """Plan one epoch: ``n`` rows of the whole split (a fresh sample per ``(seed, epoch)``), cut into windows.

    Each window is a list of ``(file index, sorted row indices)``; reading a window and shuffling its rows mixes
    about ``buffer`` rows drawn from many shards. The file order is random. Each file's sampled rows are split into
    ``passes`` random parts laid out part-major (all files' part 0, then all files' part 1, ...), and the windows cut
    that sequence evenly, so a window holds rows of about ``MIX_FILES`` files (or all of them) while a file is read
    by at most ``passes`` windows: ``passes = ceil(min(MIX_FILES, files) * rows per file / buffer)``, at most the
    number of windows. Shards written by ``platform data shard`` are already shuffled; the mixing matters for
    class-sorted shards from other tools.

    Args:
        counts: rows per file.
        n: rows this epoch (``None`` ⇒ all).
        buffer: rows per window; ``0`` ⇒ no row mixing: one window per file (in random order), rows in file order.
        shard: ``(rank, world)`` ⇒ only this rank's rows: ranks get disjoint rows, equal in number to within one
            over the epoch (exactly equal when ``world`` divides ``n``).

    Returns:
        The windows; ``sum`` of their rows is ``min(n, total)`` (divided by ``world`` for a shard).
    """
    rng = _rng(seed, epoch)
    file_of, local = draw_rows(counts, n, rng)
    if len(local) == 0:
        return []
    order = rng.permutation(len(counts))
    by_file = np.argsort(file_of, kind="stable")  # keeps each file's rows in their random order
    bounds = np.concatenate([[0], np.cumsum(np.bincount(file_of, minlength=len(counts)))])
    per_file = {int(f): local[by_file[bounds[f]:bounds[f + 1]]] for f in order if bounds[f + 1] > bounds[f]}
    if buffer == 0:
        windows = [[(f, np.sort(rows))] for f, rows in per_file.items()]
    else:
        total = len(local)
        nwin = math.ceil(total / buffer)
        passes = min(nwin, max(1, math.ceil(min(MIX_FILES, len(per_file)) * (total / len(per_file)) / buffer)))
        seq_f, seq_r = [], []
        for part in range(passes):
            for f, rows in per_file.items():
                piece = np.array_split(rows, passes)[part]
                seq_f.append(np.full(len(piece), f, dtype=np.int64))
                seq_r.append(piece)
        flat_f, flat_r = np.concatenate(seq_f), np.concatenate(seq_r)
        windows = []
        for idx in np.array_split(np.arange(total), nwin):
            fs, rs = flat_f[idx], flat_r[idx]
            windows.append([(int(f), np.sort(rs[fs == f])) for f in dict.fromkeys(fs.tolist())])
    if shard is not None:
        rank, world = shard
        if not 0 <= rank < world:
            raise ValueError(f"shard rank {rank} outside 0..{world - 1}")
        out, offset = [], 0
        for i, w in enumerate(windows):
            out.append(_shard_window(w, rank, world, offset, _rng(seed, epoch, i)))
            offset += sum(len(rows) for _, rows in w)
        windows = [w for w in out if w]
    return windows


def _shard_window(window, rank: int, world: int, offset: int, rng) -> list[tuple[int, np.ndarray]]:
    """This rank's rows of one window: positions ``g`` of the epoch (``offset`` + position in a random order of
    the window) with ``g % world == rank``, so ranks differ by at most one row over the whole epoch."""
    f = np.concatenate([np.full(len(r), fi, dtype=np.int64) for fi, r in window])
    r = np.concatenate([rows for _, rows in window])
    keep = rng.permutation(len(r))[(rank - offset) % world::world]
    f, r = f[keep], r[keep]
    return [(int(fi), np.sort(r[f == fi])) for fi in dict.fromkeys(f.tolist())]


def read_rows(fs, counts: ShardCounts, rows: np.ndarray, columns: list[str]) -> pa.Table:
    """The given rows (sorted indices) of one shard, in that order, reading only the row groups that hold them."""
    starts = np.concatenate([[0], np.cumsum(counts.groups)]).astype(np.int64)
    group_of = np.searchsorted(starts, rows, side="right") - 1
    groups = sorted(set(group_of.tolist()))
    with fs.open(counts.path, "rb") as handle:
        table = pq.ParquetFile(handle).read_row_groups(groups, columns=columns)
    # rows of the concatenated groups: offset of each group inside the read table
    base = np.concatenate([[0], np.cumsum([counts.groups[g] for g in groups])])
    where = {g: base[i] for i, g in enumerate(groups)}
    local = np.asarray([where[g] for g in group_of.tolist()], dtype=np.int64) + (rows - starts[group_of])
    return table.take(pa.array(local))


def read_window(fs, counts: list[ShardCounts], window: list[tuple[int, np.ndarray]], columns: list[str],
                rng: np.random.Generator | None) -> pa.Table:
    """One window's rows as a table, shuffled with ``rng`` (``None`` ⇒ file then row order)."""
    table = pa.concat_tables([read_rows(fs, counts[f], rows, columns) for f, rows in window])
    return table if rng is None else table.take(pa.array(rng.permutation(table.num_rows)))


def sample_split(url: str | os.PathLike | None, split: str | None, n: int, *, seed: int, columns: list[str],
                 batch: int = 256, skip: int = 0, default_split: str = "train") -> Iterator[pa.Table]:
    """A seeded uniform sample of ``n`` rows of one split, yielded as tables of at most ``batch`` rows.

    Rows ``skip .. skip+n`` of the seeded random order are taken, so two calls with the same seed and disjoint
    ``[skip, skip+n)`` ranges give disjoint samples (a bank and its queries from one folder). Only the row groups
    holding sampled rows are read, a batch at a time.

    Raises:
        UserError: missing path / split, no shards, ``n`` < 1.
    """
    from mimlab.data.pipeline import shard_files

    if n < 1:
        raise UserError(f"sample size must be >= 1, got {n}")
    fs, files = shard_files(url, split, default_split)
    counts = row_counts(fs, files)
    file_of, local = draw_rows([c.rows for c in counts], None, _rng(seed))
    file_of, local = file_of[skip:skip + n], local[skip:skip + n]
    for start in range(0, len(local), batch):
        f, r = file_of[start:start + batch], local[start:start + batch]
        parts, order = [], []
        for fi in dict.fromkeys(f.tolist()):
            sel = np.flatnonzero(f == fi)
            rows = r[sel]
            sort = np.argsort(rows)
            parts.append(read_rows(fs, counts[fi], rows[sort], columns))
            order.append(sel[sort])
        table = pa.concat_tables(parts)
        inverse = np.empty(len(r), dtype=np.int64)
        inverse[np.concatenate(order)] = np.arange(len(r))
        yield table.take(pa.array(inverse))  # back to the sample's random order


def has_splits(url: str | os.PathLike | None) -> bool:
    """Whether ``url`` is a root holding ``train/`` and ``val/`` (``None``, the embedded dataset, is one)."""
    from mimlab.data.fs import locate
    from mimlab.data.sources import pick_split

    text, fs, path = locate(url)
    return pick_split(fs, path, text, None, "train")[0] != path


def split_rows(url: str | os.PathLike | None, split: str | None = None, default_split: str = "train") -> int:
    """Rows of one split, from the shard footers."""
    from mimlab.data.pipeline import shard_files

    fs, files = shard_files(url, split, default_split)
    return sum(c.rows for c in row_counts(fs, files))


def batch_classes(batches: Iterable) -> float:
    """Mean number of distinct labels per batch; labels < 0 (unlabelled) are ignored, as are batches without any.

    Args:
        batches: per-batch label arrays (``[B]`` each; numpy, torch or lists).

    Returns:
        The mean, or ``nan`` when no batch carries a label.
    """
    counts = []
    for labels in batches:
        arr = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels).reshape(-1)
        arr = arr[arr >= 0]
        if arr.size:
            counts.append(len(np.unique(arr)))
    return float(np.mean(counts)) if counts else float("nan")
