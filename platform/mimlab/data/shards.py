"""Read and write shard files (one Parquet file per shard), always through fsspec."""

from __future__ import annotations

from collections.abc import Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from mimlab.data.fs import write_atomic
from mimlab.data.schema import check_schema
from mimlab.errors import UserError


def shard_name(index: int) -> str:
    """File name of shard ``index`` (``part-00003.parquet``)."""
    return f"part-{index:05d}.parquet"


def write_shard(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table) -> None:
    """Write one shard atomically (temporary name, then rename). Same table ⇒ same bytes."""
    write_atomic(fs, path, lambda handle: pq.write_table(
        table, handle, compression="snappy", use_dictionary=["label"], write_statistics=["label"]))


def read_schema(fs: fsspec.AbstractFileSystem, path: str) -> pa.Schema:
    """The Arrow schema of one shard file.

    Raises:
        UserError: when the file is not readable Parquet.
    """
    try:
        with fs.open(path, "rb") as handle:
            return pq.read_schema(handle)
    except (pa.ArrowInvalid, OSError) as err:
        raise UserError(f"'{path}' is not a readable Parquet shard: {err}") from None


def iter_tables(fs: fsspec.AbstractFileSystem, files: list[str], columns: list[str] | None = None,
                ) -> Iterator[tuple[str, pa.Table]]:
    """Yield ``(file, table)`` for each shard after checking its schema; ``mask`` is dropped when absent."""
    for path in files:
        has_mask = check_schema(read_schema(fs, path), path)
        wanted = columns
        if wanted is not None and not has_mask:
            wanted = [c for c in wanted if c != "mask"]
        with fs.open(path, "rb") as handle:
            yield path, pq.read_table(handle, columns=wanted)


def count_rows(fs: fsspec.AbstractFileSystem, path: str) -> int:
    """Rows in one shard, from the Parquet footer only."""
    with fs.open(path, "rb") as handle:
        return pq.ParquetFile(handle).metadata.num_rows
